"""Tiny random-weight encoders of every architecture the matrix covers, built from configs (no downloads).

Each folder holds the model and a WordPiece tokenizer over the test vocabulary, so ``AutoModel`` /
``AutoTokenizer`` load it exactly as they load a real checkpoint of that architecture.
"""

from __future__ import annotations

from pathlib import Path

ARCHITECTURES = ("bert", "mpnet", "roberta", "distilbert", "electra", "modernbert")


def _config(arch: str, vocab_size: int, hidden: int, layers: int):
    import transformers as tf

    common = dict(vocab_size=vocab_size, pad_token_id=0)
    if arch == "distilbert":
        return tf.DistilBertConfig(
            dim=hidden, n_layers=layers, n_heads=2, hidden_dim=2 * hidden, max_position_embeddings=512, **common
        )
    if arch == "modernbert":
        # ids of [CLS]/[SEP]/[MASK] in the shared vocabulary; local attention every other layer as released
        return tf.ModernBertConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=2 * hidden,
            max_position_embeddings=512,
            global_attn_every_n_layers=2,
            local_attention=16,
            bos_token_id=2,
            eos_token_id=3,
            cls_token_id=2,
            sep_token_id=3,
            **common,
        )
    cls = {
        "bert": tf.BertConfig,
        "mpnet": tf.MPNetConfig,
        "roberta": tf.RobertaConfig,
        "electra": tf.ElectraConfig,
    }[arch]
    extra = {"embedding_size": hidden // 2} if arch == "electra" else {}  # ELECTRA projects small embeddings up
    return cls(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=514,  # RoBERTa/MPNet positions start after the padding index
        **extra,
        **common,
    )


def build_tiny_encoder(path: Path, arch: str, vocab: list[str], seed: int = 0, hidden: int = 32, layers: int = 2):
    import torch
    from transformers import AutoModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(path)
    torch.manual_seed(seed)
    AutoModel.from_config(_config(arch, len(vocab), hidden, layers)).eval().save_pretrained(path)
    return path
