"""Greedy and beam-search decoding of an autoregressive step function (keras.ops, unrolled
over a static number of steps, so the same code runs eagerly, in a SavedModel and on every
backend).

`step_fn(prev_tokens [M], constants, state) -> (logits [M, K], state)`; token 0 is the end
of word. Both return `tokens` int32 `[N, steps]` (PAD = -1 after the first end-of-word
symbol) and `log_probs` `[N]`: the summed log-probability of the tokens up to and including
the end-of-word symbol.
"""

import keras
from keras import ops

from iseg.text.charset import EOS, PAD

_NEG = -1e9


def _map(fn, structure):
    return keras.tree.map_structure(fn, structure)


def finish(tokens, step_log_probs):
    """Tokens after the first EOS -> PAD, and the log-probability summed up to the EOS."""
    not_eos = ops.cast(ops.not_equal(tokens, EOS), "int32")
    before = ops.cumprod(not_eos, axis=1)  # 1 strictly before the first EOS
    upto = ops.concatenate([ops.ones_like(before[:, :1]), before[:, :-1]], axis=1)
    tokens = ops.where(upto > 0, tokens, PAD)
    return tokens, ops.sum(step_log_probs * ops.cast(upto, step_log_probs.dtype), axis=1)


def greedy_search(step_fn, constants, state, batch_size, steps, go_token):
    prev = ops.full((batch_size,), go_token, "int32")
    tokens, log_probs = [], []
    for _ in range(steps):
        logits, state = step_fn(prev, constants, state)
        logp = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
        prev = ops.cast(ops.argmax(logp, axis=-1), "int32")
        tokens.append(prev)
        log_probs.append(ops.max(logp, axis=-1))
    return finish(ops.stack(tokens, axis=1), ops.stack(log_probs, axis=1))


def beam_search(step_fn, constants, state, batch_size, steps, go_token, beam_width):
    """Keeps the `beam_width` best prefixes per image; a finished prefix (ended by EOS)
    only continues with EOS at no cost. Returns the best sequence per image."""
    b = int(beam_width)
    if b == 1:
        return greedy_search(step_fn, constants, state, batch_size, steps, go_token)
    n = batch_size
    constants = _map(lambda t: ops.repeat(t, b, axis=0), constants)  # [N*B, ...]
    state = _map(lambda t: ops.repeat(t, b, axis=0), state)
    prev = ops.full((n * b,), go_token, "int32")
    scores = ops.concatenate([ops.zeros((n, 1)), ops.full((n, b - 1), _NEG)], axis=1)
    finished = ops.zeros((n, b), "bool")
    history = []
    offsets = ops.arange(n, dtype="int32")[:, None] * b
    for _ in range(steps):
        logits, state = step_fn(prev, constants, state)
        k = logits.shape[-1]
        if k < b:
            raise ValueError(f"beam_width={b} exceeds the {k} classes")
        logp = ops.reshape(ops.log_softmax(ops.cast(logits, "float32"), axis=-1), (n, b, k))
        eos_only = ops.where(ops.arange(k) == EOS, 0.0, _NEG)
        logp = ops.where(finished[..., None], eos_only, logp)
        top, index = ops.top_k(ops.reshape(scores[..., None] + logp, (n, b * k)), b)
        beam = ops.cast(index // k, "int32")
        token = ops.cast(index % k, "int32")
        rows = ops.reshape(offsets + beam, (-1,))
        state = _map(lambda t, rows=rows: ops.take(t, rows, axis=0), state)
        history = [ops.take_along_axis(h, beam, axis=1) for h in history] + [token]
        finished = ops.logical_or(ops.take_along_axis(finished, beam, axis=1),
                                  ops.equal(token, EOS))
        scores = top
        prev = ops.reshape(token, (-1,))
    best = ops.cast(ops.argmax(scores, axis=1), "int32")
    all_tokens = ops.reshape(ops.stack(history, axis=2), (n * b, steps))
    tokens = ops.take(all_tokens, offsets[:, 0] + best, axis=0)
    tokens, _ = finish(tokens, ops.zeros(ops.shape(tokens)))
    return tokens, ops.max(scores, axis=1)
