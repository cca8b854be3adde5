"""Inspect the gates of a character-level LSTM: statistics, pictures, gradient flow, ablation.

Trains the char-LM task's LSTM (``gatenets.tasks.charlm``: the next character of Python
standard-library source, text already on the machine) with ``gatenets.train.fit``, then writes
an HTML report with the gate statistics, the saturation scatter of Karpathy et al. (2015), a
gate heatmap, the input text coloured by one unit's forget gate, the gradient-through-time
picture beside a plain sigmoid RNN, and a gate-ablation table.

    python examples/inspect_gates.py --steps 600 --out report/
"""

import argparse
import math
import os

import numpy as np

import gatenets
from gatenets.tasks import get_task
from gatenets.train import RunConfig, train_model

# Settings (each can be overridden on the command line).
STEPS = 600
HIDDEN = 64
LENGTH = 64
BATCH = 32
BATCHES = 16  # batches the statistics stream over
LEARNING_RATE = 1e-2
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
    task = get_task("charlm", seq_len=length)
    print(f"{task.vocab_size} symbols; the char-LM task's default model, trained with fit")
    config = RunConfig(
        "charlm",
        {"seq_len": length},
        model="lstm",
        hidden=hidden,
        steps=steps,
        batch_size=batch,
        learning_rate=LEARNING_RATE,
        seed=seed,
        eval_every=0,
    )
    trained = train_model(config, task=task, progress=progress)
    lstm = trained.model
    # The mean training loss of the last steps, against a model that ignores context.
    bits = {"lstm": trained.result.train_loss / math.log(2), "unigram": task.baseline}

    # 1. Statistics over many batches, streamed (running sums, no traces kept).
    data = task.batches("valid", batch, seed=seed)
    stats = gatenets.inspect.streaming_statistics(
        lstm, data, max_batches=batches, progress=progress
    )
    print(gatenets.inspect.format_table(stats))

    # 2. One batch kept whole for per-step pictures.
    sample = next(task.batches("valid", batch, seed=seed))
    trace = gatenets.inspect.collect(lstm, sample)
    forget = np.asarray(trace.gates["layer0/forward"].forget[0])  # [time, units]
    unit = int(np.argmax(forget.std(axis=0)))  # the forget unit that moves most in this text
    text = task.decode(sample.inputs[0])
    # What does that unit respond to? Compare its gate on spaces with the rest, whole batch.
    all_forget = np.asarray(trace.gates["layer0/forward"].forget[..., unit])
    space = np.asarray(sample.inputs) == task.vocab.index(" ")
    print(
        f"forget unit {unit}: mean {all_forget[space].mean():.3f} on spaces, "
        f"{all_forget[~space].mean():.3f} on other characters"
    )
    gatenets.inspect.save_trace(trace, os.path.join(out, "trace.npz"))

    # 3. Gradient through time: how far back the loss at the last step reaches, in the
    # trained LSTM and in an untrained plain sigmoid RNN of the same size on the same text.
    profiles = gatenets.inspect.gradient_contrast(lstm, sample.inputs, seed=seed)
    for profile in profiles:
        back = min(32, length - 1)
        print(
            f"{profile.label}: ‖∂L/∂h_t‖ / max = {profile.relative[-1 - back]:.2e} {back} steps "
            f"before the loss, {profile.relative[0]:.2e} at t = 0"
        )

    # 4. Ablation: close each gate in turn (override it with 0) and measure bits/char.
    def bits_per_char(logits, batch):
        return task.metrics(logits, batch)["bits_per_char"]

    ablation = gatenets.inspect.ablate(lstm, [sample], bits_per_char, value=0.0)
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
            "‖∂L/∂h_t‖ relative to its largest value, loss at the last character; trained "
            "LSTM against an untrained plain sigmoid RNN of the same size.",
        ),
    ]
    files = gatenets.inspect.write_report(
        out,
        stats=stats,
        figures=figures,
        title="Gates of a character-level LSTM",
        notes=[
            f"{hidden}-unit LSTM, {steps} steps: {bits['lstm']:.3f} bits/char on its last "
            f"training batches; a context-free unigram model: {bits['unigram']:.3f} bits/char."
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
