"""Small reranking models written by the tests: no cross-encoder ships in any package here.

Two files, one per rerank engine:

- `onnx_cross_encoder(folder)`: an ONNX cross-encoder folder for fastembed's
  TextCrossEncoder (model.onnx with inputs input_ids, attention_mask,
  token_type_ids and output logits [batch, 1]; a BERT WordPiece tokenizer.json
  whose pair template sets token types; tokenizer_config.json). Its network is
  a bag of words, not a transformer: each known word has a random vector, the
  query side (token type 0) and the document side (type 1) are summed, and the
  score is their dot product over the document's norm. So a document that shares
  the query's words scores higher, by construction: the tests can check that the
  gateway ranks relevant documents first while the engine path (fastembed's
  session, pair tokenization, padding, micro-batches) is the real one.
- `minilm_reranker_gguf()`: all-MiniLM-L6-v2's real BERT encoder (converted by
  tests/synth/bert_gguf.py) with rank pooling and a random classification head
  (`cls.*`, `cls.output.*`): llama.cpp's rank pooling runs for real; the scores
  are noise, so tests compare them with the same engine's, not with relevance.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tests.synth.bert_gguf import CONVERTER_VERSION, SAFETENSORS_SHA256, SAFETENSORS_SOURCE, convert, test_models_dir

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = """a an the of in on at to for and or is are was were be it this that with as by from what which who
where when how why do does did can will not no yes paris france capital city country river seine tower eiffel
berlin germany london england rome italy madrid spain population people live lives many large small big
python programming language code snake reptile animal zoo computer software write written fast slow
cat cats dog dogs pet pets sleep sleeps food eat eats fish water sea ocean blue sky sun moon star stars
music song songs piano guitar play plays weather rain snow cold hot summer winter apple fruit tree red green
car cars road drive engine bank money account loan interest rate bread bake oven flour recipe cook""".split()
DIM = 256
SEED = 1234


def _vocab() -> list[str]:
    return SPECIALS + sorted(set(WORDS))


def _tokenizer_json(vocab: list[str]) -> str:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tokenizer = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]",
                                           max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = vocab.index("[CLS]"), vocab.index("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return tokenizer.to_str()


def _graph(vocab: list[str]) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(SEED)
    table = (rng.standard_normal((len(vocab), DIM)) / np.sqrt(DIM)).astype(np.float32)
    table[:len(SPECIALS)] = 0.0  # [PAD], [UNK], [CLS], [SEP], [MASK] carry no meaning
    inits = [numpy_helper.from_array(table, "embeddings"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
             numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
             numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
             numpy_helper.from_array(np.array(4.0, dtype=np.float32), "gain")]
    nodes = [
        helper.make_node("Gather", ["embeddings", "input_ids"], ["emb"]),
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["token_type_ids"], ["types"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "types"], ["not_types"]),
        helper.make_node("Mul", ["mask", "not_types"], ["wq"]),
        helper.make_node("Mul", ["mask", "types"], ["wd"]),
        helper.make_node("Unsqueeze", ["wq", "axis2"], ["wq3"]),
        helper.make_node("Unsqueeze", ["wd", "axis2"], ["wd3"]),
        helper.make_node("Mul", ["emb", "wq3"], ["eq"]),
        helper.make_node("Mul", ["emb", "wd3"], ["ed"]),
        helper.make_node("ReduceSum", ["eq", "axis1"], ["q"], keepdims=0),
        helper.make_node("ReduceSum", ["ed", "axis1"], ["d"], keepdims=0),
        helper.make_node("Mul", ["d", "d"], ["dd"]),
        helper.make_node("ReduceSum", ["dd", "axis1"], ["dd_sum"], keepdims=1),
        helper.make_node("Add", ["dd_sum", "one"], ["dd_one"]),
        helper.make_node("Sqrt", ["dd_one"], ["d_norm"]),
        helper.make_node("Div", ["d", "d_norm"], ["dn"]),
        helper.make_node("Mul", ["q", "dn"], ["qd"]),
        helper.make_node("ReduceSum", ["qd", "axis1"], ["raw"], keepdims=1),
        helper.make_node("Mul", ["raw", "gain"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "one"], ["logits"]),
    ]
    ints = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
            for n in ("input_ids", "attention_mask", "token_type_ids")]
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])
    graph = helper.make_graph(nodes, "bag_of_words_cross_encoder", ints, [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def onnx_cross_encoder(folder: Path) -> Path:
    """Write the ONNX cross-encoder folder (about 200 KB) and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _vocab()
    (folder / "model.onnx").write_bytes(_graph(vocab))
    (folder / "tokenizer.json").write_text(_tokenizer_json(vocab))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 512, "do_lower_case": True, "cls_token": "[CLS]", "sep_token": "[SEP]",
        "pad_token": "[PAD]", "unk_token": "[UNK]", "mask_token": "[MASK]", "tokenizer_class": "BertTokenizer"}))
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]", "mask_token": "[MASK]"}))
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["BertForSequenceClassification"], "max_position_embeddings": 512, "hidden_size": DIM,
        "vocab_size": len(vocab), "num_labels": 1, "id2label": {"0": "LABEL_0"}}))
    return folder


def minilm_reranker_gguf() -> Path:
    """all-MiniLM-L6-v2 + a random classification head as a GGUF reranker (rank pooling), cached."""
    from gateway.manifest import hub
    from gateway.manifest.hub import file_lock
    from schemas.manifest import ModelSpec

    out = test_models_dir() / f"minilm-reranker-f16-v{CONVERTER_VERSION}.gguf"
    with file_lock(out):
        if out.exists():
            return out
        folder = hub.fetch(ModelSpec(name="all-minilm-l6-v2", source="all-minilm-l6-v2"))
        weights = hub.fetch(ModelSpec(name="minilm-safetensors", source=SAFETENSORS_SOURCE, sha256=SAFETENSORS_SHA256))
        rng = np.random.default_rng(SEED)
        width = 384
        head = {
            "cls.weight": (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32),
            "cls.bias": np.zeros(width, dtype=np.float32),
            "cls.output.weight": (rng.standard_normal((1, width)) / np.sqrt(width)).astype(np.float32),
            "cls.output.bias": np.zeros(1, dtype=np.float32),
        }
        partial = out.with_name(out.name + ".partial")
        convert(Path(folder), Path(weights), partial, pooling="rank", head=head, name="minilm-reranker-synthetic")
        os.replace(partial, out)
    return out

