"""Experiments as code: the CIFAR-10 campaign as typed experiments, a run's identity from its
config, the campaign's compute accounting, its stored records and tables.

* `base`: `Experiment` (a task, flags over the base recipe, rows as typed overrides, seeds, the
  label its runs' directories carry), `config_of` (an experiment's row and seed -> the `Config`
  its run trains), `run_id` (a hash of that config, workdir, seed and data location left out);
* `cifar10`: the campaign's experiments by name (`rotation_headgrid4`, `rotation_semisup`, ...);
* `costs`: block FLOPs (TensorFlow's profiler), stage costs, equal-compute epochs, TFLOPs;
* `records`: finding, checking, migrating and aggregating stored records;
* `tables`: an experiment's Markdown/JSON/plot tables; `answer`: the campaign's answer.

`scripts/reproduce.py`, `scripts/campaign_answer.py` and `scripts/migrate_records.py` are the
command lines. Importing this package imports no TensorFlow; `config_of`, `run_id` and
`costs.block_flops` do, when called.
"""
