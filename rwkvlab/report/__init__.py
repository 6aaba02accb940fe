"""Tables and figures of the study."""

from rwkvlab.report.figures import dataset_montage, overlay_cases, overlay_figure, training_curves
from rwkvlab.report.tables import paper_table, results_table, write_table

__all__ = ["dataset_montage", "overlay_cases", "overlay_figure", "training_curves", "paper_table", "results_table", "write_table"]
