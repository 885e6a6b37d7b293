"""Build a tiny, randomly initialised Llama with its own byte-level BPE tokenizer, offline.

SGLang serves it on the CPU for end-to-end tests. The weights are a real random initialisation
(not `--load-format dummy`) so that logits vary and token comparisons mean something.

Usage: python -m eval.tiny_model DEST [--seed 0] [--vocab-size 512] [--hidden-size 128] ...
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<s>", "</s>", "<unk>", "<pad>"]
MARKER_NAME = "asymcache_tiny_model.json"
# Bump when the generated files change so stale directories are rebuilt.
FORMAT_VERSION = 1
# Weight init std. HF's default 0.02 gives near-uniform logits (greedy decoding falls into
# repeats); 0.1 makes the next token depend strongly on the context, so comparisons bite.
INIT_STD = 0.1

# Same layout as SGLang's frontend "default" chat template (SYSTEM:/USER:/ASSISTANT:), so
# `sgl.function` programs and /v1/chat/completions produce the same prompt text.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}SYSTEM:"
    "{% elif message['role'] == 'user' %}USER:"
    "{% else %}ASSISTANT:{% endif %}"
    "{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

_ONSETS = ["b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "ea", "ou", "ai"]
_CODAS = ["", "", "n", "r", "s", "t", "l", "nd", "ng", "st"]
_FUNCTION_WORDS = ["the", "a", "of", "and", "to", "in", "is", "it", "that", "with", "for", "on"]
_PUNCT = [".", ".", ".", "?", "!", ","]


def _corpus(num_sentences: int = 6000) -> list[str]:
    """Deterministic English-like text: syllable words with a Zipf-ish frequency skew."""
    rng = random.Random(1234)
    lexicon = []
    for _ in range(1500):
        word = "".join(
            rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
            for _ in range(rng.choice([1, 1, 2, 2, 3]))
        )
        lexicon.append(word)
    weights = [1.0 / (rank + 1) for rank in range(len(lexicon))]
    lines = []
    for _ in range(num_sentences):
        words = []
        for _ in range(rng.randint(4, 16)):
            if rng.random() < 0.3:
                words.append(rng.choice(_FUNCTION_WORDS))
            else:
                words.append(rng.choices(lexicon, weights)[0])
        words[0] = words[0].capitalize()
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 2025)))
        lines.append(" ".join(words) + rng.choice(_PUNCT))
    return lines


def _train_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(
            f"tokenizer has {tok.get_vocab_size()} tokens, wanted {vocab_size}; "
            "the generated corpus is too small for this vocab size"
        )
    bos_id = tok.token_to_id("<s>")
    # Llama-style: a BOS in front of every encoded text.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=1 << 20,
    )


def make_tiny_llama(
    dest: str | Path,
    *,
    seed: int = 0,
    vocab_size: int = 512,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int | None = None,
    max_position_embeddings: int = 4096,
) -> Path:
    """Write a tokenizer, config and safetensors weights for a tiny LlamaForCausalLM to `dest`."""
    dest = Path(dest)
    params = {
        "format_version": FORMAT_VERSION,
        "init_std": INIT_STD,
        "seed": seed,
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": max_position_embeddings,
    }
    marker = dest / MARKER_NAME
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return dest

    # Imported lazily so the cache-hit path above stays fast.
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    dest.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    tokenizer = _train_tokenizer(vocab_size)
    tokenizer.save_pretrained(dest)

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim if head_dim is not None else hidden_size // num_heads,
        max_position_embeddings=max_position_embeddings,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        initializer_range=INIT_STD,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        architectures=["LlamaForCausalLM"],
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(dest, safe_serialization=True)
    # Written last: its presence means every other file is complete.
    marker.write_text(json.dumps(params, indent=1) + "\n")
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--num-kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=None)
    parser.add_argument("--max-position-embeddings", type=int, default=4096)
    args = parser.parse_args()
    path = make_tiny_llama(
        args.dest,
        seed=args.seed,
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        num_kv_heads=args.num_kv_heads,
        head_dim=args.head_dim,
        max_position_embeddings=args.max_position_embeddings,
    )
    print(path)


if __name__ == "__main__":
    main()
