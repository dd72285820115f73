"""Frozen-encoder evaluation on real labelled data: ``rsfm eval --real``.

Five tasks (EuroSAT-MS, reBEN, Salinas-A, Sen1Floods11, Presto algae), each measured in
the same run for the raw normalised bands, a random init of the architecture and every
given checkpoint, with a linear probe and kNN whose hyperparameters are chosen by inner
cross-validation on the training part. Modules: :mod:`.metrics`, :mod:`.probes`,
:mod:`.features`, :mod:`.tasks`, :mod:`.presto_split`, :mod:`.run` (runner and writers),
:mod:`.cli` (the flags). Protocols and decisions: docs/evaluation.md.
"""
