"""Pictures and the HTML report: files exist, images decode, what is drawn is the data, the
report references nothing outside itself, the command works end to end."""

import base64
import html.parser
import io
import pathlib

import matplotlib.image
import numpy as np
import pytest
from helpers import load_example
from matplotlib import colormaps

from gatenets import GateTrace, GRUGates, LSTMGates
from gatenets.cli import main
from gatenets.inspect import (
    GradientProfile,
    ReportFigure,
    gate_heatmap,
    gate_histograms,
    gate_statistics,
    gradient_plot,
    load_trace,
    saturation_scatter,
    save_figure,
    text_heatmap,
    text_heatmap_html,
    write_report,
)
from gatenets.tasks import get_task


def small_trace():
    rng = np.random.default_rng(0)
    mask = np.ones((2, 6), bool)
    mask[1, 4:] = False
    lstm = LSTMGates(*(rng.random((2, 6, 4)) for _ in range(3)))
    gru = GRUGates(rng.random((2, 6, 4)), rng.random((2, 6, 4)))
    return GateTrace({"layer0/forward": lstm, "layer1/forward": gru}, mask)


def decode_png(path_or_bytes):
    image = matplotlib.image.imread(
        io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes,
        format="png",
    )
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    # A picture, not a blank canvas.
    assert image[..., :3].std() > 0.01
    return image


def test_saturation_scatter_draws_one_point_per_unit(tmp_path):
    stats = gate_statistics(small_trace(), left=0.3, right=0.7)
    fig = saturation_scatter(stats, gates=["forget", "layer1/forward/update"])
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["layer0/forward/forget", "layer1/forward/update"]
    points = visible[0].collections[0].get_offsets()
    s = stats["layer0/forward/forget"]
    np.testing.assert_allclose(points, np.stack([s.left_saturated, s.right_saturated], 1))
    decode_png(save_figure(fig, tmp_path / "scatter.png"))


def test_histograms_and_heatmap_show_the_data(tmp_path):
    trace = small_trace()
    stats = gate_statistics(trace, bins=5)
    fig = gate_histograms(stats, gates=["reset"])
    heights = [bar.get_height() for bar in fig.axes[0].patches]
    counts = stats["layer1/forward/reset"].histogram.sum(axis=0)
    np.testing.assert_allclose(heights, counts / counts.sum())
    decode_png(save_figure(fig, tmp_path / "hist.png"))

    fig = gate_heatmap(trace, "layer0/forward/input", example=1, units=[3, 0])
    shown = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(shown, trace.gates["layer0/forward"].input[1, :4][:, [3, 0]].T)
    decode_png(save_figure(fig, tmp_path / "heatmap.png"))


def test_text_heatmap_colours_each_character(tmp_path):
    text = 'x = "a(b)"\nok'
    values = np.linspace(0, 1, len(text))
    fig = text_heatmap(text, values, title="unit 0")
    ax = fig.axes[0]
    drawn = [t.get_text() for t in ax.texts]
    assert "".join(drawn) == text.replace("\n", "\u21b5")
    cmap = colormaps["coolwarm"]
    for patch, value in zip(ax.patches, values, strict=True):
        np.testing.assert_allclose(patch.get_facecolor(), cmap(value))
    decode_png(save_figure(fig, tmp_path / "text.png"))
    fragment = text_heatmap_html("a<b", [0.0, 0.5, 1.0])
    assert fragment.count("<span") == 3 and "&lt;" in fragment
    r, g, b, _ = (int(255 * c) for c in cmap(1.0))
    assert f"rgb({r},{g},{b})" in fragment


def test_gradient_plot_leaves_underflow_out(tmp_path):
    profiles = [
        GradientProfile(np.array([1e-3, 1e-2, 1.0]), "lstm"),
        GradientProfile(np.array([0.0, 1e-9, 2.0]), "rnn"),
    ]
    fig = gradient_plot(profiles)
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["lstm", "rnn"]
    np.testing.assert_allclose(lines[1].get_ydata(), [np.nan, 5e-10, 1.0])
    decode_png(save_figure(fig, tmp_path / "gradient.png"))


class References(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href", "srcset", "data", "action", "poster"):
                self.links.append((tag, value))


def check_self_contained(page):
    parser = References()
    parser.feed(page)
    assert parser.links, "the report has no images"
    for tag, link in parser.links:
        assert link.startswith(("data:", "#")), f"external reference in <{tag}>: {link[:60]}"
    assert "@import" not in page and "url(" not in page
    for _, link in parser.links:
        if link.startswith("data:image/png;base64,"):
            decode_png(base64.b64decode(link.split(",", 1)[1]))
    return parser.links


def test_write_report_is_self_contained_and_atomic(tmp_path):
    trace = small_trace()
    stats = gate_statistics(trace)
    figures = [ReportFigure("saturation", saturation_scatter(stats), "caption <1>")]
    (tmp_path / "report.html").write_text("old")
    files = write_report(
        tmp_path,
        stats=stats,
        figures=figures,
        notes=["a & b"],
        fragments={"text": text_heatmap_html("ab", [0.1, 0.9])},
    )
    page = pathlib.Path(files.html).read_text(encoding="utf-8")
    links = check_self_contained(page)
    assert len(links) == 1
    assert "caption &lt;1&gt;" in page and "a &amp; b" in page
    for name in stats:
        assert f"<td>{name}</td>" in page
    decode_png(files.images["saturation"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "saturation.png"]
    with pytest.raises(ValueError, match="stats is empty"):
        write_report(tmp_path, stats={})


def test_plot_bad_input():
    trace = small_trace()
    stats = gate_statistics(trace)
    with pytest.raises(ValueError, match="unknown gate 'forgot'"):
        saturation_scatter(stats, gates=["forgot"])
    with pytest.raises(ValueError, match="is ambiguous"):
        gru = trace.gates["layer1/forward"]
        gate_heatmap(trace._replace(gates={"a": gru, "b": gru}), "reset")
    with pytest.raises(ValueError, match=r"units \[9\] out of range"):
        gate_heatmap(trace, "layer0/forward/input", units=[9])
    with pytest.raises(ValueError, match=r"example must be an int in \[0, 2\)"):
        gate_heatmap(trace, "layer0/forward/input", example=2)
    with pytest.raises(ValueError, match=r"one number per character of text \(3\)"):
        text_heatmap("abc", [0.1, 0.2])
    with pytest.raises(ValueError, match="profiles is empty"):
        gradient_plot([])


def test_inspect_command_writes_the_report(tmp_path, capsys):
    out = tmp_path / "report"
    code = main(
        [
            "inspect",
            "--out",
            str(out),
            "--steps",
            "2",
            "--hidden",
            "8",
            "--length",
            "12",
            "--batches",
            "2",
            "--batch-size",
            "4",
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "bits/char" in printed and f"report: {out / 'report.html'}" in printed
    assert f"explorer: {out / 'explorer.html'}" in printed
    names = {p.name for p in out.iterdir()}
    assert names == {
        "report.html",
        "explorer.html",
        "saturation.png",
        "histograms.png",
        "heatmap.png",
        "text_heatmap.png",
        "gradient_through_time.png",
    }
    page = (out / "report.html").read_text(encoding="utf-8")
    assert len(check_self_contained(page)) == 5
    assert "Gate ablation" in page and "layer0/forward/forget" in page
    assert 'class="text-heatmap"' in page


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "0"], "gatenets inspect: --steps must be >= 1; got 0."),
        (["--left", "0.5", "--right", "0.4"], "need 0 <= --left <= --right <= 1; got --left 0.5"),
        (["--run", "{tmp}/missing"], "--run '{tmp}/missing' is not a directory; give a run"),
        (["--run", "{tmp}"], "--run: run_dir: no config.json in '{tmp}'; it is not a run"),
        (["--run", "{tmp}/bad"], "--run: '{tmp}/bad/config.json' is not a run config written by"),
        (["--out", "{tmp}/bad/config.json"], "--out '{tmp}/bad/config.json' is a file, not a"),
    ],
)
def test_inspect_command_bad_arguments_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    # Checked before any work: no training starts (it would print its first line).
    assert main(["inspect", "--out", str(tmp_path / "report"), *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"gatenets inspect: {captured.err.split(': ', 1)[1]}"
    assert message.replace("{tmp}", str(tmp_path)) in captured.err
    assert len(captured.err.splitlines()) == 1 and "Traceback" not in captured.err


def test_example_writes_the_report(tmp_path, capsys):
    example = load_example("inspect_gates")
    # The command test's sizes, so the compiled steps are shared.
    files, stats, bits = example.main(
        steps=2, hidden=8, length=12, batch=4, batches=2, out=str(tmp_path), progress=False
    )
    check_self_contained(pathlib.Path(files.html).read_text(encoding="utf-8"))
    assert set(files.images) == {
        "saturation",
        "histograms",
        "heatmap",
        "text_heatmap",
        "gradient_through_time",
    }
    assert stats["layer0/forward/forget"].count == 2 * 4 * 12
    assert np.isfinite(bits["lstm"]) and 0 < bits["unigram"] == get_task("charlm").baseline
    trace = load_trace(tmp_path / "trace.npz")
    assert trace.gates["layer0/forward"].forget.shape == (4, 12, 8)
    assert "steps before the loss" in capsys.readouterr().out


def test_inspect_model_skips_empty_sequences_and_reports_every_part(tmp_path):
    import collections

    from flax import nnx

    import gatenets

    gru = gatenets.GRU(2, 3, bidirectional=True, rngs=nnx.Rngs(0))
    Batch = collections.namedtuple("Batch", ["inputs", "targets", "mask"])
    x = np.random.default_rng(0).normal(size=(2, 5, 2)).astype(np.float32)
    batch = Batch(x, None, np.array([[False] * 5, [True] * 4 + [False]]))
    files = gatenets.inspect.inspect_model(
        gru,
        [batch, batch],
        tmp_path,
        progress=False,
    )
    page = pathlib.Path(files.html).read_text(encoding="utf-8")
    check_self_contained(page)
    assert "over sequence 1 of the first batch" in page
    for name in ("layer0/forward/reset", "layer0/backward/update"):
        assert f"<td>{name}</td>" in page
    assert set(files.images) == {"saturation", "histograms", "heatmap"}


def test_inspect_command_reads_a_run_of_gatenets_run(tmp_path, capsys):
    run_dir, out = tmp_path / "run", tmp_path / "report"
    assert (
        main(
            [
                "run",
                "charlm",
                "--steps",
                "2",
                "--hidden",
                "8",
                "--batch-size",
                "4",
                "-o",
                "seq_len=12",
                "--out",
                str(run_dir),
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "inspect",
                "--run",
                str(run_dir),
                "--out",
                str(out),
                "--batches",
                "2",
                "--batch-size",
                "4",
                "--no-progress",
            ]
        )
        == 0
    )
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    page = (out / "report.html").read_text(encoding="utf-8")
    assert len(check_self_contained(page)) == 5
    assert "charlm" in page and "bits_per_char" in page
    assert (out / "gradient_through_time.png").exists()
