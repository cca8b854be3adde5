"""Gate inspection: statistics, pictures, HTML report, export, gradient flow and ablation.

Everything here works on a :class:`~gatenets.GateTrace`, whatever layer produced it::

    trace = gatenets.inspect.collect(model, batches)          # gates by name, with the mask
    stats = gatenets.inspect.gate_statistics(trace)           # per unit, mask-aware
    fig = gatenets.inspect.saturation_scatter(stats)          # Karpathy et al. 2015, Fig. 3
    gatenets.inspect.inspect_model(model, batches, "report/") # HTML report + PNGs
    # = collect_report (run the model), report_figures (draw), write_report (atomic HTML)
"""

from gatenets.inspect.ablation import AblationResult as AblationResult
from gatenets.inspect.ablation import ablate as ablate
from gatenets.inspect.ablation import format_ablation as format_ablation
from gatenets.inspect.export import export_lstmvis as export_lstmvis
from gatenets.inspect.export import load_trace as load_trace
from gatenets.inspect.export import save_trace as save_trace
from gatenets.inspect.probe import GradientProfile as GradientProfile
from gatenets.inspect.probe import PlainRNNCell as PlainRNNCell
from gatenets.inspect.probe import gradient_contrast as gradient_contrast
from gatenets.inspect.probe import gradient_through_time as gradient_through_time
from gatenets.inspect.statistics import FirstTokenShare as FirstTokenShare
from gatenets.inspect.statistics import GateAccumulator as GateAccumulator
from gatenets.inspect.statistics import GateStatistics as GateStatistics
from gatenets.inspect.statistics import SummaryRow as SummaryRow
from gatenets.inspect.statistics import accumulate as accumulate
from gatenets.inspect.statistics import collect as collect
from gatenets.inspect.statistics import finalize as finalize
from gatenets.inspect.statistics import first_token_share as first_token_share
from gatenets.inspect.statistics import format_table as format_table
from gatenets.inspect.statistics import gate_statistics as gate_statistics
from gatenets.inspect.statistics import streaming_statistics as streaming_statistics
from gatenets.inspect.statistics import summary_table as summary_table

# Pictures and reports need matplotlib, which `import gatenets` should not pay for: their names
# are imported on first use.
_LAZY = {
    "ReportContent": "gatenets.inspect.report",
    "ReportData": "gatenets.inspect.report",
    "ReportFigure": "gatenets.inspect.report",
    "ReportFiles": "gatenets.inspect.report",
    "gate_heatmap": "gatenets.inspect.plots",
    "gate_histograms": "gatenets.inspect.plots",
    "gradient_plot": "gatenets.inspect.plots",
    "inspect_model": "gatenets.inspect.report",
    "saturation_scatter": "gatenets.inspect.plots",
    "save_figure": "gatenets.inspect.plots",
    "collect_report": "gatenets.inspect.report",
    "report_figures": "gatenets.inspect.report",
    "text_heatmap": "gatenets.inspect.plots",
    "text_heatmap_html": "gatenets.inspect.plots",
    "write_report": "gatenets.inspect.report",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        try:
            module = importlib.import_module(_LAZY[name])
        except ImportError as err:
            if not (err.name or "").startswith(("matplotlib", "tqdm")):
                raise
            raise ImportError(
                f"gatenets.inspect.{name} needs {err.name}, a dependency of gatenets: "
                f"pip install {err.name.split('.')[0]}."
            ) from err
        return getattr(module, name)
    raise AttributeError(f"module 'gatenets.inspect' has no attribute {name!r}")


__all__ = [
    "AblationResult",
    "FirstTokenShare",
    "GateAccumulator",
    "GateStatistics",
    "GradientProfile",
    "PlainRNNCell",
    "ReportContent",
    "ReportData",
    "ReportFigure",
    "ReportFiles",
    "SummaryRow",
    "ablate",
    "accumulate",
    "collect",
    "collect_report",
    "export_lstmvis",
    "finalize",
    "first_token_share",
    "format_ablation",
    "format_table",
    "gate_heatmap",
    "gate_histograms",
    "gate_statistics",
    "gradient_contrast",
    "gradient_plot",
    "gradient_through_time",
    "inspect_model",
    "load_trace",
    "report_figures",
    "save_figure",
    "save_trace",
    "saturation_scatter",
    "streaming_statistics",
    "summary_table",
    "text_heatmap",
    "text_heatmap_html",
    "write_report",
]
