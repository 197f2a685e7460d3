# The two commands (see README):
#   make serve   install what is missing, then run `greencache serve` on the embedded default
#   make test    install what is missing, check the import contracts (import-linter), then run the
#                test suite (real vLLM, Ray Serve, Redis)
VENV ?= .venv
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install serve test bench

install:
	@bash scripts/bootstrap.sh

serve: install
	$(VENV)/bin/greencache serve $(ARGS)

test: install
	$(VENV)/bin/lint-imports
	$(VENV)/bin/python -m pytest -p no:cacheprovider -W ignore::DeprecationWarning $(PYTEST_ARGS) tests

bench: install
	$(VENV)/bin/greencache bench serve $(ARGS)
