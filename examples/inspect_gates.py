"""Inspect the gates of a character-level LSTM: statistics, pictures, gradient flow, ablation.

Trains a small LSTM to predict the next character of Python standard-library source (text
already on the machine), then writes an HTML report with the gate statistics, the saturation
scatter of Karpathy et al. (2015), a gate heatmap, the input text coloured by one unit's forget
gate, the gradient-through-time picture beside a plain sigmoid RNN, and a gate-ablation table.

    python examples/inspect_gates.py --steps 600 --out report/
"""

import argparse
import os

import jax.numpy as jnp
import numpy as np
import optax

import gatenets
from gatenets.inspect import builtin

# Settings (each can be overridden on the command line).
STEPS = 600
HIDDEN = 64
LENGTH = 64
BATCH = 32
BATCHES = 16  # batches the statistics stream over
OUT = "report"
SEED = 0


def main(
    steps=STEPS,
    hidden=HIDDEN,
    length=LENGTH,
    batch=BATCH,
    batches=BATCHES,
    out=OUT,
    seed=SEED,
    progress=True,
):
    """Trains, inspects and writes the report; returns (report files, statistics, bits/char)."""
    corpus = builtin.builtin_corpus()
    print(f"{len(corpus.text)} characters, {len(corpus.vocabulary)} symbols")
    options = dict(hidden=hidden, steps=steps, batch_size=batch, length=length, seed=seed)
    lstm, lstm_losses = builtin.train_char_model(corpus, kind="lstm", **options)
    plain, plain_losses = builtin.train_char_model(corpus, kind="plain", **options)
    bits = {
        "lstm": float(np.mean(lstm_losses[-20:]) / np.log(2)),
        "plain": float(np.mean(plain_losses[-20:]) / np.log(2)),
    }

    # 1. Statistics over many batches, streamed (running sums, no traces kept).
    data = corpus.batches(batch, length, seed=seed + 1)
    stats = gatenets.inspect.streaming_statistics(
        lstm, data, max_batches=batches, progress=progress
    )
    print(gatenets.inspect.format_table(stats))

    # 2. One batch kept whole for per-step pictures.
    sample = next(corpus.batches(batch, length, seed=seed + 2))
    trace = gatenets.inspect.collect(lstm, sample)
    forget = np.asarray(trace.gates["layer0/forward"].forget[0])  # [time, units]
    unit = int(np.argmax(forget.std(axis=0)))  # the forget unit that moves most in this text
    text = corpus.decode(sample.inputs[0])
    # What does that unit respond to? Compare its gate on spaces with the rest, whole batch.
    all_forget = np.asarray(trace.gates["layer0/forward"].forget[..., unit])
    space = np.asarray(sample.inputs) == corpus.vocabulary.index(" ")
    print(
        f"forget unit {unit}: mean {all_forget[space].mean():.3f} on spaces, "
        f"{all_forget[~space].mean():.3f} on other characters"
    )
    gatenets.inspect.save_trace(trace, os.path.join(out, "trace.npz"))

    # 3. Gradient through time: how far back the loss at the last character reaches.
    profiles = []
    for model, label in ((lstm, "LSTM (forget bias 1)"), (plain, "plain sigmoid RNN")):
        embedded = model.embed(jnp.asarray(sample.inputs))
        targets = jnp.asarray(sample.targets[:, -1])
        head = model.head

        def last_step_loss(outputs, head=head, targets=targets):
            logits = head(outputs[:, -1])
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets))

        profile = gatenets.inspect.gradient_through_time(
            model.cell, embedded, loss_fn=last_step_loss, label=label
        )
        profiles.append(profile)
        back = min(32, length - 1)
        print(
            f"{label}: ‖∂L/∂h_t‖ / max = {profile.relative[-1 - back]:.2e} {back} steps before "
            f"the loss, {profile.relative[0]:.2e} at t = 0"
        )

    # 4. Ablation: close each gate in turn (override it with 0) and measure bits/char.
    ablation = gatenets.inspect.ablate(lstm, [sample], builtin.bits_per_char, value=0.0)
    print(gatenets.inspect.format_ablation(ablation, "bits/char"))

    figure = gatenets.inspect.ReportFigure
    figures = [
        figure("saturation", gatenets.inspect.saturation_scatter(stats), "One point per unit."),
        figure("histograms", gatenets.inspect.gate_histograms(stats), "Gate value histograms."),
        figure(
            "heatmap",
            gatenets.inspect.gate_heatmap(
                trace, "layer0/forward/forget", units=range(min(16, hidden))
            ),
            "Forget gate of units 0-15 over the first sequence.",
        ),
        figure(
            "text_heatmap",
            gatenets.inspect.text_heatmap(text, forget[:, unit], title=f"forget gate, unit {unit}"),
            f"Characters coloured by unit {unit}'s forget gate (blue 0, red 1).",
        ),
        figure(
            "gradient_through_time",
            gatenets.inspect.gradient_plot(profiles),
            "‖∂L/∂h_t‖ relative to its largest value, loss at the last character.",
        ),
    ]
    files = gatenets.inspect.write_report(
        out,
        stats=stats,
        figures=figures,
        title="Gates of a character-level LSTM",
        notes=[
            f"{hidden}-unit LSTM, {steps} steps: {bits['lstm']:.3f} bits/char; plain sigmoid "
            f"RNN, same size and steps: {bits['plain']:.3f} bits/char."
        ],
        fragments={
            f"Text coloured by forget unit {unit}": gatenets.inspect.text_heatmap_html(
                text, forget[:, unit]
            )
        },
        ablation=(ablation, "bits/char", 0.0),
    )
    print(f"report: {files.html}")
    return files, stats, bits


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--hidden", type=int, default=HIDDEN)
    parser.add_argument("--length", type=int, default=LENGTH)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--batches", type=int, default=BATCHES)
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    main(args.steps, args.hidden, args.length, args.batch, args.batches, args.out, args.seed)
