"""Tables and figures of the study: ``cards`` (datasets), ``figures`` (overlays, curves), ``comparison`` (the
paper's comparison tables), ``ablations`` (its ablation tables), ``erf`` (Fig. 3), ``explore`` (the ablation
explorer), ``tables`` (Markdown/CSV writing).

Nothing is imported here, so that a stage importing one of them depends on that module alone (the DVC deps
of each stage are its import closure).
"""
