"""Benchmarks and measurement tools (`greencache bench ...`, `greencache profile`): they print JSON and a table; they are not tests."""
