"""Peak finding: the finders, the true peak lists they are scored against, their evaluation and indexing.

Every finder has the same interface, in the raw convention (fs, ss in pixels of the stacked (ss, fs) frame):

* ``find(counts, good) -> DataFrame`` with ``counts`` float32 (ss, fs) photon counts and ``good`` bool (ss, fs)
  (False where a pixel must not count), returning columns ``fs, ss, photons, snr, score``, one row per peak;
* optionally ``prepare(geometry)``, called once per detector before the first frame of that detector.

Modules: :mod:`.matching` (true peak lists, one-to-one matching, metrics), :mod:`.peakfinder8` and
:mod:`.radial` (peakfinder8 and its radial statistics), :mod:`.network` (the peak network), :mod:`.cascade` and
:mod:`.cascade_train` (the sparse CPU cascade), :mod:`.paper_heatmap` (the source paper's heatmap model),
:mod:`.evaluation` (the finders scored side by side), :mod:`.bound` (the detection bound), :mod:`.indexing` and
:mod:`.stream` (CrystFEL indexing of the found peaks and its stream files).
"""
