"""The machinery of the one training loop, apart from what a distiller computes.

``textbrewer.distillers`` says *what* a step computes (forwards, adaptors, losses); this package
says *how* a run proceeds, whatever the distiller:

* ``arguments``: reads a ``train()`` call, documented or 0.2.x style, into a ``TrainCall``.
* ``plans``: where micro-batches come from (epochs, steps, sampled tasks) and which optimizer
  steps are checkpoints.
* ``engine``: device, autocast, gradient scaling and DistributedDataParallel, in one place.
* ``session``: one ``train()`` call's state (optimizer, scheduler, plan, counters, log) and the
  one mapping of stateful parts that is saved and resumed.
* ``checkpoint``: atomic files, RNG states, finding and loading training states.
* ``loss_log``: losses kept on the device and read back in batches (tensorboard, progress bar,
  the non-finite check).

Nothing here is re-exported from ``textbrewer``: these are helpers of the loop, importable for
those who build their own, but the public API is the distillers and the configurations.
"""
