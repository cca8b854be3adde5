"""Character-level language model on the Python standard library's source (or a text file),
reporting validation bits per character and sampling text at a temperature.

    python examples/charlm.py --steps 1000
    python examples/charlm.py --text my_novel.txt --temperature 0.6
"""

import argparse

import optax
from flax import nnx

from gatenets.tasks import get_task
from gatenets.train import evaluate, fit

# Settings (each can be overridden on the command line).
TEXT = None  # None: the fixed list of standard-library files in gatenets.tasks.charlm
SEQ_LEN = 100
MODEL = "lstm"
HIDDEN = 128
STEPS = 1000
BATCH = 32
LEARNING_RATE = 5e-3
TEMPERATURE = 0.8
PROMPT = "def "
SEED = 0


def main(
    text=TEXT,
    seq_len=SEQ_LEN,
    model=MODEL,
    hidden=HIDDEN,
    steps=STEPS,
    batch=BATCH,
    learning_rate=LEARNING_RATE,
    temperature=TEMPERATURE,
    prompt=PROMPT,
    seed=SEED,
    progress=True,
):
    """Trains, prints validation bits per character and a sample; returns (metrics, sample)."""
    task = get_task("charlm", text_file=text, seq_len=seq_len)
    net = task.make_model(model, hidden, rngs=nnx.Rngs(seed))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(learning_rate))
    fit(
        net,
        tx,
        task,
        steps=steps,
        batch_size=batch,
        seed=seed,
        eval_every=max(1, steps // 4),
        eval_batch_size=64,
        progress=progress,
    )
    valid = evaluate(net, task, "valid", batch_size=64)
    print(
        f"validation {valid['bits_per_char']:.3f} bits/char (unigram baseline "
        f"{task.baseline:.3f}); vocabulary of {task.vocab_size} characters"
    )
    sample = task.sample(net, prompt, 300, temperature=temperature, seed=seed)
    print(f"--- sample, temperature {temperature} ---\n{sample}")
    return valid, sample


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", default=TEXT)
    parser.add_argument("--seq-len", type=int, default=SEQ_LEN)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--hidden", type=int, default=HIDDEN)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE)
    parser.add_argument("--temperature", type=float, default=TEMPERATURE)
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--seed", type=int, default=SEED)
    main(**vars(parser.parse_args()))
