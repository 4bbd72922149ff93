"""A tiny decoder-only language model in the ONNX layout optimum exports.

No ONNX LLM can be fetched on these machines, and torch is not installed by
default, so the tests write one with `onnx.helper`: the same inputs and outputs
as optimum's "text-generation-with-past" export (`input_ids`, `attention_mask`,
`position_ids`, `past_key_values.N.key/value` in, `logits` and
`present.N.key/value` out), a real causal multi-head attention over the KV
cache, a byte-level BPE `tokenizer.json` trained with `tokenizers`, and a
`tokenizer_config.json` with a ChatML chat template. (Real optimum exports of tiny Llama, GPT-2
and Qwen2 were checked once by hand to have this layout; torch is not installed here.)

The weights are random except for one planted rule, so tests can assert exact
text: the embedding is one-hot and the LM head maps every token to a fixed
successor, while attention and MLP only add small noise. Greedy decoding
therefore counts " one two ... ten one ...", " red" is followed by
" green blue" and then the end-of-turn token (EOS), and any other token is
followed by " one". The successor's logit is only a few units above the rest,
so sampling at temperature 1 is mostly random and different seeds differ.

    python -m tests.synth.onnx_lm            # writes ~/.cache/nexa/test-models/tiny-onnx-lm-v1/
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from gateway.manifest.hub import file_lock

log = logging.getLogger("nexa.tests.synth")

VERSION = 1  # bump when the output changes, so cached folders are rewritten
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
COLOURS = ["red", "green", "blue"]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
HEADS, LAYERS, MAX_POSITIONS = 4, 2, 512
SIGNAL = 2.5  # the successor's logit; the others stay near 0
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tokenizer():
    """A GPT-2-style byte-level BPE in which every planted word (with a leading space) is one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    words = NUMBERS + COLOURS + ["user", "assistant", "system", "Count", "colours", "hello", "world"]
    corpus = [" ".join(words), "\n".join(words), "Count: one, two. colours: red!"] * 20
    tokenizer.train_from_iterator(corpus, trainer)
    for word in NUMBERS + COLOURS:
        ids = tokenizer.encode(" " + word, add_special_tokens=False).ids
        assert len(ids) == 1, f"' {word}' is {len(ids)} tokens"
    return tokenizer


def successors(tokenizer) -> dict[int, int]:
    """The planted rule: token id -> the id greedy decoding picks next."""
    one = lambda word: tokenizer.token_to_id("Ġ" + word)  # noqa: E731 - ByteLevel writes a space as Ġ
    table = {i: one("one") for i in range(tokenizer.get_vocab_size())}
    for a, b in zip(NUMBERS, NUMBERS[1:] + NUMBERS[:1]):
        table[one(a)] = one(b)
    table[one("red")], table[one("green")] = one("green"), one("blue")
    table[one("blue")] = tokenizer.token_to_id("<|im_end|>")
    return table


def build_graph(vocab: int, table: dict[int, int], seed: int = 0, with_past: bool = True):
    """The decoder graph: pre-norm attention over past+current keys with a causal and padding mask, an MLP,
    a final RMSNorm and the LM head. Shapes follow optimum: past [batch, heads, past_len, head_dim].
    Without `with_past` it is an export without a KV cache (same weights)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    hidden = math.ceil(vocab / HEADS) * HEADS
    head_dim = hidden // HEADS
    inits: list = []
    nodes: list = []

    def const(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def noise(*shape: int, std: float) -> np.ndarray:
        return rng.normal(0.0, std, shape).astype(np.float32)

    def rms_norm(value: str, name: str) -> str:
        """Llama's RMSNorm (no centring, so a one-hot row stays one-hot)."""
        mean = node("ReduceMean", [node("Mul", [value, value], name + "_sq")], name + "_mean", axes=[-1], keepdims=1)
        return node("Div", [value, node("Sqrt", [node("Add", [mean, "eps"], name + "_eps")], name + "_rms")], name)

    embedding = np.zeros((vocab, hidden), np.float32)
    embedding[np.arange(vocab), np.arange(vocab)] = 1.0
    const("wte", embedding)
    const("wpe", noise(MAX_POSITIONS, hidden, std=0.002))
    const("eps", np.array(1e-6, np.float32))
    const("heads_shape", np.array([0, 0, HEADS, head_dim], np.int64))
    const("hidden_shape", np.array([0, 0, hidden], np.int64))
    const("scale", np.array(1.0 / math.sqrt(head_dim), np.float32))
    const("neg", np.array(-1e9, np.float32))
    const("i0", np.array(0, np.int64))
    const("i1", np.array(1, np.int64))
    const("axes_1_3", np.array([1, 3], np.int64))
    const("axes_0_1_2", np.array([0, 1, 2], np.int64))
    const("axes_1_2", np.array([1, 2], np.int64))

    tok_emb = node("Gather", ["wte", "input_ids"], "tok_emb")
    x = node("Add", [tok_emb, node("Gather", ["wpe", "position_ids"], "pos_emb")], "x0")
    # mask [batch, 1, q, total]: key position <= query position, and the key is not padding
    total = node("Gather", [node("Shape", ["attention_mask"], "mask_shape"), "i1"], "total_len", axis=0)
    key_pos = node("Unsqueeze", [node("Range", ["i0", total, "i1"], "key_range"), "axes_0_1_2"], "key_pos")
    query_pos = node("Unsqueeze", ["position_ids", "axes_1_3"], "query_pos")
    causal = node("LessOrEqual", [key_pos, query_pos], "causal")
    mask_4d = node("Unsqueeze", ["attention_mask", "axes_1_2"], "mask_4d")
    keep = node("Cast", [mask_4d], "mask_bool", to=TensorProto.BOOL)
    allowed = node("And", [causal, keep], "allowed")

    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", vocab])]
    past_inputs = []
    for layer in range(LAYERS):
        p = f"l{layer}."
        h = rms_norm(x, p + "norm1")

        def heads(kind: str) -> str:
            proj = node("MatMul", [h, const(p + "w" + kind, noise(hidden, hidden, std=0.05))], p + kind)
            return node("Transpose", [node("Reshape", [proj, "heads_shape"], p + kind + "_4d")], p + kind + "_t",
                        perm=[0, 2, 1, 3])

        q, k, v = heads("q"), heads("k"), heads("v")
        if with_past:
            present_k = node("Concat", [f"past_key_values.{layer}.key", k], f"present.{layer}.key", axis=2)
            present_v = node("Concat", [f"past_key_values.{layer}.value", v], f"present.{layer}.value", axis=2)
        else:
            present_k, present_v = k, v
        scores = node("Mul", [node("MatMul", [q, node("Transpose", [present_k], p + "kt", perm=[0, 1, 3, 2])],
                                   p + "qk"), "scale"], p + "scores")
        probs = node("Softmax", [node("Where", [allowed, scores, "neg"], p + "masked")], p + "probs", axis=-1)
        context = node("Transpose", [node("MatMul", [probs, present_v], p + "ctx")], p + "ctx_t", perm=[0, 2, 1, 3])
        merged = node("Reshape", [context, "hidden_shape"], p + "merged")
        x = node("Add", [x, node("MatMul", [merged, const(p + "wo", noise(hidden, hidden, std=0.0003))], p + "attn")],
                 p + "x_attn")
        h2 = rms_norm(x, p + "norm2")
        up = node("Relu", [node("MatMul", [h2, const(p + "w1", noise(hidden, 64, std=0.05))], p + "up")], p + "act")
        x = node("Add", [x, node("MatMul", [up, const(p + "w2", noise(64, hidden, std=0.0003))], p + "mlp")], p + "x")
        for kind in ("key", "value") if with_past else ():
            shape = ["batch_size", HEADS, "past_sequence_length", head_dim]
            past_inputs.append(
                helper.make_tensor_value_info(f"past_key_values.{layer}.{kind}", TensorProto.FLOAT, shape))
            outputs.append(helper.make_tensor_value_info(f"present.{layer}.{kind}", TensorProto.FLOAT,
                                                         ["batch_size", HEADS, "total_sequence_length", head_dim]))
    final = rms_norm(x, "norm_f")
    # RMSNorm turns the one-hot row into ~sqrt(hidden) at the token's position: scale the head to SIGNAL.
    head = np.zeros((hidden, vocab), np.float32)
    for token, following in table.items():
        head[token, following] = SIGNAL / math.sqrt(hidden)
    node("MatMul", [final, const("lm_head", head)], "logits")

    ints = lambda name, dims: helper.make_tensor_value_info(name, TensorProto.INT64, dims)  # noqa: E731
    inputs = [ints("input_ids", ["batch_size", "sequence_length"]),
              ints("attention_mask", ["batch_size", "total_sequence_length"]),
              ints("position_ids", ["batch_size", "sequence_length"]), *past_inputs]
    graph = helper.make_graph(nodes, "tiny_decoder", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="nexa-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, hidden, head_dim


def write_folder(folder: Path, with_past: bool = True) -> Path:
    """Write model.onnx, tokenizer.json and the Hugging Face config files into `folder`."""
    import onnx

    tokenizer = build_tokenizer()
    vocab = tokenizer.get_vocab_size()
    model, hidden, head_dim = build_graph(vocab, successors(tokenizer), with_past=with_past)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    tokenizer.save(str(folder / "tokenizer.json"))
    eos = tokenizer.token_to_id("<|im_end|>")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "model_max_length": MAX_POSITIONS, "chat_template": CHATML,
    }, indent=2))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "nexa-tiny-decoder", "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "head_dim": head_dim,
        "max_position_embeddings": MAX_POSITIONS, "eos_token_id": eos,
    }, indent=2))
    (folder / "generation_config.json").write_text(json.dumps({
        "eos_token_id": [eos, tokenizer.token_to_id("<|endoftext|>")]}, indent=2))
    return folder


def models_dir() -> Path:
    root = os.environ.get("NEXA_TEST_MODELS")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "nexa" / "test-models"




def tiny_onnx_lm() -> Path:
    """The cached model folder, written once per machine (under a lock: test processes share it)."""
    folder = models_dir() / f"tiny-onnx-lm-v{VERSION}"
    done = folder / ".complete"
    with file_lock(folder):
        if not done.exists():
            log.info("writing the tiny ONNX language model to %s", folder, extra={"event": "synth_model"})
            staging = folder.with_name(folder.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            write_folder(staging)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(staging, folder)
            done.write_text("ok\n")
    return folder


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(tiny_onnx_lm() if len(sys.argv) < 2 else write_folder(Path(sys.argv[1])))
