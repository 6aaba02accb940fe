"""Tables and figures of the study."""

from rwkvlab.report.comparison import (baseline_complexity_table, comparison_chart, comparison_tables, results_table,
                                       write_comparison_tables)
from rwkvlab.report.erf import (area_ratio, area_ratio_table, erf_figure, erf_heatmap, erf_map, variant_erfs,
                                write_erf)
from rwkvlab.report.figures import dataset_montage, overlay_cases, overlay_figure, training_curves
from rwkvlab.report.tables import paper_table, write_table

__all__ = ["dataset_montage", "overlay_cases", "overlay_figure", "training_curves", "paper_table", "results_table", "write_table",
           "erf_map", "area_ratio", "erf_heatmap", "write_erf", "variant_erfs", "erf_figure", "area_ratio_table",
           "comparison_tables", "write_comparison_tables", "baseline_complexity_table", "comparison_chart"]
