#!/usr/bin/env python3
"""Writes a tiny random-weight llama-architecture GGUF model for llama-server.

Runs inside the Debian sid chroot made by scripts/llama-server (it needs sid's
python3-gguf and python3-numpy): `python3 make-tiny-model.py OUT.gguf`.

No model can be downloaded on the test machines, and tests only need an engine
that really tokenizes, batches, fills slots and reuses cached prefixes, not
one that says anything sensible. So the weights are seeded random numbers
(same seed, same bytes: the file is byte-identical on every run in the same
chroot) and the vocabulary is built from the English text of the licenses in
/usr/share/common-licenses:

- <unk>, <s>, </s>, <|im_start|>, <|im_end|> (the last four are control
  tokens; <|im_end|> is also the end-of-turn token, as in ChatML models);
- byte-fallback tokens <0x00>..<0xFF>, so any input can be tokenized;
- the SentencePiece space marker U+2581 and every printable character of the
  text;
- the most frequent words, each with the marker in front and with all of its
  marker-prefixed prefixes. llama.cpp's SentencePiece merger joins adjacent
  symbols only when the joined text is a token, so the chain "_t", "_th",
  "_the" is what lets it turn " the" into one token.

The chat template is ChatML, so /v1/chat/completions formats messages as
<|im_start|>role\\ncontent<|im_end|>\\n, with Hermes-style tool blocks (below).
"""

import collections
import os
import re
import sys

import numpy as np
import gguf

SEED = 20250520
N_LAYER = 2
N_EMBD = 256
N_HEAD = 4
N_HEAD_KV = 2  # grouped-query attention: KV per token is half of Q's width
N_FF = 512
# Training context: at least the slot size the scripts use (-c 32768 -np 4
# gives 8192 per slot); llama-server caps a slot at the training context.
N_CTX_TRAIN = 32768
N_VOCAB_MAX = 4096
TEXT_DIR = "/usr/share/common-licenses"
MARKER = "\u2581"

CHATML = (
    # Hermes-style tool calling, the format of Qwen 2.5 and Hermes models:
    # tools go in the system block inside <tools></tools>, an assistant's
    # calls are <tool_call>{"name": ..., "arguments": ...}</tool_call>, tool
    # results come back as <tool_response> in a user turn. So a request's
    # tools and earlier calls really reach the prompt (and its token count).
    # llama-server 0.7.0 (sid, build 11669) does not take this template for
    # a native tool-call format: with random weights and no grammar the
    # model never emits a call, so tests check tool calls on lmsim.
    "{% set ns = namespace(first=0) %}"
    "{% if tools %}"
    "{{ '<|im_start|>system\\n' }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{{ messages[0]['content'] + '\\n\\n' }}{% set ns.first = 1 %}"
    "{% endif %}"
    "{{ '# Tools\\n\\nYou may call functions. Signatures are in <tools></tools>:\\n<tools>' }}"
    "{% for tool in tools %}{{ '\\n' + (tool | tojson) }}{% endfor %}"
    "{{ '\\n</tools>\\n\\nFor each call, return a JSON object with the function name and '"
    "'arguments inside <tool_call></tool_call> tags:\\n<tool_call>\\n'"
    "'{\"name\": <function-name>, \"arguments\": <args-json-object>}\\n</tool_call>'"
    "'<|im_end|>\\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if loop.index0 >= ns.first %}"
    "{% if message['role'] == 'tool' %}"
    "{{ '<|im_start|>user\\n<tool_response>\\n' + (message['content'] or '') + '\\n</tool_response><|im_end|>\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') }}"
    "{% if message['tool_calls'] %}{% for call in message['tool_calls'] %}"
    "{{ '\\n<tool_call>\\n{\"name\": \"' + call['function']['name'] + '\", \"arguments\": ' }}"
    "{% if call['function']['arguments'] is string %}{{ call['function']['arguments'] }}"
    "{% else %}{{ call['function']['arguments'] | tojson }}{% endif %}"
    "{{ '}\\n</tool_call>' }}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def read_text():
    """All license text, in a fixed file order so the vocabulary is stable."""
    parts = []
    for name in sorted(os.listdir(TEXT_DIR)):
        path = os.path.join(TEXT_DIR, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                parts.append(f.read())
    if not parts:
        sys.exit(f"make-tiny-model: no text in {TEXT_DIR}")
    return "\n".join(parts)


def build_vocab(text):
    """Returns (tokens, scores, types) lists in token-id order."""
    T = gguf.TokenType
    tokens, scores, types = [], [], []
    seen = set()

    def add(tok, score, ttype):
        if tok in seen:
            return
        seen.add(tok)
        tokens.append(tok)
        scores.append(score)
        types.append(ttype)

    add("<unk>", 0.0, T.UNKNOWN)
    add("<s>", 0.0, T.CONTROL)
    add("</s>", 0.0, T.CONTROL)
    add("<|im_start|>", 0.0, T.CONTROL)
    add("<|im_end|>", 0.0, T.CONTROL)
    for b in range(256):
        add(f"<0x{b:02X}>", 0.0, T.BYTE)

    # Normal tokens get strictly decreasing scores: the merger prefers higher
    # scores, and each word has only one merge chain, so any order works; a
    # fixed one keeps the file reproducible.
    normal = [MARKER]
    chars = collections.Counter(c for c in text if c.isprintable() and c != " ")
    normal += [c for c, _ in sorted(chars.items(), key=lambda kv: (-kv[1], kv[0]))]
    words = collections.Counter(re.findall(r"[A-Za-z]+", text))
    budget = N_VOCAB_MAX - len(tokens)
    chosen = set(normal)
    for word, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])):
        pieces = [MARKER + word[:k] for k in range(1, len(word) + 1)]
        new = [p for p in pieces if p not in chosen]
        if len(normal) + len(new) > budget:
            continue
        normal += new
        chosen.update(new)
    for i, tok in enumerate(normal):
        add(tok, -float(i), T.NORMAL)
    return tokens, scores, types


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make-tiny-model.py OUT.gguf")
    out = sys.argv[1]
    tokens, scores, types = build_vocab(read_text())
    n_vocab = len(tokens)
    head_dim = N_EMBD // N_HEAD
    rng = np.random.default_rng(SEED)

    def matrix(rows, cols):
        # numpy shape (rows, cols) is GGUF/ggml shape [cols, rows]: ggml
        # multiplies by rows of `cols` inputs, giving `rows` outputs.
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    def ones(n):
        return np.ones(n, dtype=np.float32)

    w = gguf.GGUFWriter(out, "llama")
    w.add_name("lmsched tiny random llama")
    w.add_context_length(N_CTX_TRAIN)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(tokens.index("<unk>"))
    w.add_bos_token_id(tokens.index("<s>"))
    w.add_eos_token_id(tokens.index("</s>"))
    w.add_eot_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    # No space before the first word: llama-server primes a grammar with the
    # generation prompt's tokens, and a "\u2581assistant" token would not match
    # the prompt text "assistant", failing every response_format request.
    w.add_add_space_prefix(False)
    w.add_chat_template(CHATML)

    # Output projection is tied to the embedding (no output.weight), which
    # llama.cpp supports and which keeps the file small.
    w.add_tensor("token_embd.weight", matrix(n_vocab, N_EMBD))
    w.add_tensor("output_norm.weight", ones(N_EMBD))
    for i in range(N_LAYER):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", ones(N_EMBD))
        w.add_tensor(p + "attn_q.weight", matrix(N_HEAD * head_dim, N_EMBD))
        w.add_tensor(p + "attn_k.weight", matrix(N_HEAD_KV * head_dim, N_EMBD))
        w.add_tensor(p + "attn_v.weight", matrix(N_HEAD_KV * head_dim, N_EMBD))
        w.add_tensor(p + "attn_output.weight", matrix(N_EMBD, N_HEAD * head_dim))
        w.add_tensor(p + "ffn_norm.weight", ones(N_EMBD))
        w.add_tensor(p + "ffn_gate.weight", matrix(N_FF, N_EMBD))
        w.add_tensor(p + "ffn_up.weight", matrix(N_FF, N_EMBD))
        w.add_tensor(p + "ffn_down.weight", matrix(N_EMBD, N_FF))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"make-tiny-model: {out}: {n_vocab} tokens, {N_LAYER} layers, "
          f"embd {N_EMBD}, heads {N_HEAD}/{N_HEAD_KV} kv, ff {N_FF}")


if __name__ == "__main__":
    main()
