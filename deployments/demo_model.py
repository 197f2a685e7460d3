"""Build the demo model: a small Llama with random weights and a locally trained tokenizer.

No download is involved: the byte-level BPE tokenizer is trained with `tokenizers` on a corpus
generated here, and the weights are drawn from a seeded normal distribution. vLLM loads the
result like any Hugging Face model directory, so every serving path (engine, KV connector,
store, routing, autoscaling) can be exercised on a machine without a GPU or internet.

The output is nonsense text, but it is *deterministic* under greedy decoding, which is what
the cache-correctness tests need (a cache hit must give the same tokens as a cold run).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Optional

# ChatML-style template; `add_generation_prompt` opens the assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when if "
    "can more will what so time about model cache carbon energy grid server request token "
    "prefix replica latency power memory store disk redis cluster green serve answer question "
    "write explain code python function data value number first second because people world "
    "work year day way could other into than then some these two may like only new just over "
    "also after use how our many most where well should through good each those such make "
    "very long great little own old right big high different small large next early young "
    "important few public bad same able"
).split()


def _corpus(seed: int, n_lines: int = 4000) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 24))]
        line = " ".join(words).capitalize() + rng.choice([".", "?", "!", ":", ","])
        if rng.random() < 0.2:
            line += f" {rng.randint(0, 99999)}"
        lines.append(line)
    # Make sure punctuation, digits and code-ish text get merges too.
    lines.append("def f(x):\n    return x * 2  # {}[]()<>=+-/\\'\"`~!@#$%^&*_|;:,.?")
    return lines


def _train_tokenizer(vocab_size: int, max_position_embeddings: int, seed: int):
    """A byte-level BPE tokenizer (any UTF-8 text encodes) trained on the generated corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=max_position_embeddings,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    return hf_tok


def _write_model(out: Path, hf_tok, spec: dict) -> None:
    """Random seeded Llama weights for `hf_tok`'s vocabulary, and a generation config that
    leaves sampling to the requests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_layers"],
        num_attention_heads=spec["num_heads"],
        num_key_value_heads=spec["num_kv_heads"],
        max_position_embeddings=spec["max_position_embeddings"],
        bos_token_id=hf_tok.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=hf_tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=hf_tok.convert_tokens_to_ids("<|endoftext|>"),
        tie_word_embeddings=False,
        rope_theta=10000.0,
        torch_dtype=spec["dtype"],
    )
    torch.manual_seed(spec["seed"])
    model = LlamaForCausalLM(config).to(getattr(torch, spec["dtype"]))
    model.save_pretrained(out, safe_serialization=True)
    # generation_config.json written by save_pretrained may carry defaults vLLM applies
    # (e.g. do_sample); keep only the token ids so requests control sampling.
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
         "pad_token_id": config.pad_token_id}))


def build_demo_model(
    out_dir: str | Path,
    *,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 768,
    vocab_size: int = 4096,
    max_position_embeddings: int = 8192,
    dtype: str = "bfloat16",
    seed: int = 0,
) -> Path:
    """Write a loadable Llama model directory to `out_dir` and return its path.

    Idempotent: if `out_dir` already holds a model built with the same arguments, it is kept.
    """
    out = Path(out_dir)
    spec = dict(hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_kv_heads,
                intermediate_size=intermediate_size, vocab_size=vocab_size,
                max_position_embeddings=max_position_embeddings, dtype=dtype, seed=seed)
    marker = out / "greencache_demo.json"
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return out
    out.mkdir(parents=True, exist_ok=True)
    hf_tok = _train_tokenizer(vocab_size, max_position_embeddings, seed)
    hf_tok.save_pretrained(out)
    _write_model(out, hf_tok, spec)
    marker.write_text(json.dumps(spec))  # last: a half-built directory is rebuilt
    return out


def local_model_dir(model: Optional[str], home: Optional[Path]) -> str:
    """The model directory on this node: `model`, or the demo model, built under the node's
    GreenCache home on first use (every node builds the same bytes: the build is seeded)."""
    from cache_store.local import HomeLayout
    from deployments.settings import settings

    if model is None:
        return str(build_demo_model(HomeLayout(Path(home or settings().home)).demo_model))
    path = Path(model).expanduser()
    if not (path / "config.json").exists():
        raise ValueError(
            f"model directory {path} has no config.json; pass a local Hugging Face model "
            "directory, or omit --model to use the demo model"
        )
    return str(path)


def resolve_model(config) -> tuple[str, str]:
    """(model directory on this node, served name) of a `ServeConfig`."""
    from deployments.config import DEMO_MODEL_NAME

    path = local_model_dir(config.model, config.home)
    if config.served_model_name:
        return path, config.served_model_name
    return path, DEMO_MODEL_NAME if config.model is None else Path(path).name
