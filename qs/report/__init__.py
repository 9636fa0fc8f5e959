"""Evaluation of the test pairs against LDDMM optimization, and the report (tables, figures, summary).

Two steps, each a function on files and a ``qs`` subcommand (:mod:`qs.cli.report` parses their arguments):

* :func:`qs.report.pair.evaluate_pair` (``qs evaluate-pair``): one test pair. Writes into its
  folder ``deformation_error.npz`` (per-voxel error in mm of each method's
  ``phi_1^{-1}`` displacement against LDDMM's, over the target brain mask),
  ``detj.tsv``, ``overlap.tsv`` and ``timing.tsv``.
* :func:`qs.report.build.build_report` (``qs report``): all test pairs. Writes the contract
  tables ``deformation_error.tsv``, ``target_overlap.tsv``, ``timing.tsv``
  (see ``DESIGN.md``), ``detj.tsv`` (all pairs), the figures
  ``target_overlap.png``, ``deformation_error.png``, ``example_pair.png``,
  ``loss.png`` and ``summary.md``.
* :func:`qs.report.ablation.write_ablation` (``qs ablation``, the ``snakemake ablation`` target): the
  paper's variant table from the variants' evaluations: ``ablation.tsv`` and ``ablation.png``.

Method names in the tables: ``affine``, ``lddmm``, ``syn``, ``syn-quick``,
``predict``, ``predict+correct``, ``predict-mc`` (the folder of
``predict+correct`` is ``predict-correct``; :func:`qs.report.methods.method_name` maps one to
the other). ``syn`` and ``syn-quick`` are the ANTs SyN baselines
(:mod:`qs.syn`; docs/syn.md).

What is measured:

* Deformation error: ``|d_method(x) - d_lddmm(x)|`` in mm at every voxel ``x``
  of the target brain mask (target labels > 0; the given mask when the cohort
  has no labels), ``d`` the displacement of ``phi_1^{-1}`` on the target grid
  read from ``warp.nii.gz``. ``affine`` is the identity on the working grid
  (all images are affinely pre-aligned), so its error is ``|d_lddmm|``.
  Percentiles pool the voxels of all test pairs. SyN is not in this table:
  its transform is ANTs' own (``[warp, affine.mat]``) and the paper compares
  only the predicted transforms with LDDMM.
* det J: of each transform's ``phi_1^{-1}``, computed here from the warp
  (not read from the summaries) at every voxel of the grid.
  ``detj_pos_pct`` = percent of test pairs whose det J > 0 everywhere. It is
  left empty (NaN) for ``affine``, as the paper's "n/a": the identity does
  not fold by construction.
* Target overlap (Klein et al. 2009) and Dice: :func:`qs.evaluate.overlap_rows`.
* Timing: ``seconds`` and ``device`` from each method's ``summary.json``; the
  per-pair ``timing.tsv`` also keeps the SyN settings the summaries state
  (``description``), which ``summary.md`` lists.

Figures are drawn with :class:`matplotlib.figure.Figure` (no pyplot state).
Every figure is always written (a note in the panel when its data are
missing), so that the workflow's outputs exist for every cohort.

Modules, bottom up: :mod:`~qs.report.methods` (method names and order), :mod:`~qs.report.tsv` (the
tables' columns and TSV formats), :mod:`~qs.report.paper` (the paper's published numbers),
:mod:`~qs.report.tables` (aggregation, pure), :mod:`~qs.report.summary` (the text of ``summary.md``),
:mod:`~qs.report.figures` (drawing), :mod:`~qs.report.pair` (one pair: read its method outputs, write
its evaluation), :mod:`~qs.report.example` (read the example pair), :mod:`~qs.report.build` (the report folder).
"""
