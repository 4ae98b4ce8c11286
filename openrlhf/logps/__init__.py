"""The frozen models' sentence log-probs: daDPO's central quantity, in one place.

A preference run's loss reads log pi_frozen(response | prompt) of every pair, chosen and rejected, from
each frozen model: the reference (``ref``) and each teacher (``teacher``, ``teacher_2``, ...). Each of
them is a :class:`~openrlhf.logps.frozen.FrozenModel`, and its log-probs come from one source
(:mod:`openrlhf.logps.sources`), chosen once per run in the recipe
(:func:`openrlhf.logps.choose.choose_sources`):

- online: its frozen engine runs in the training process on each micro-batch (a teacher on its own
  tokenisation of the pair, ``PairBatch.own``);
- cached: columns written by ``python -m openrlhf.cli.score_logps`` (:mod:`openrlhf.logps.cache`: the file
  format and its fingerprints), checked row by row, then read from the batch;
- remote: computed elsewhere (the Ray trainers' frozen actor groups, :mod:`openrlhf.logps.remote`) and read
  from the batch in the same way.

Cached and remote values reach the batch through :class:`~openrlhf.logps.known.WithKnownLogps`, a dataset
view that adds them to each item; :func:`~openrlhf.logps.score.score_pairs` is the collective scoring
that ``score_logps`` and the Ray frozen groups share.
"""
