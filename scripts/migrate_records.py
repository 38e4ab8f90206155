r"""Gives every stored campaign record its run id (the hash of its config) and its experiment.

  python scripts/migrate_records.py [--results=docs/results/cifar10] [--dry_run]

Records written before run ids existed keep their training command; from it the run's config,
and so its run id, is computed, checked against the id of the experiment row its directory
label names (`psl_tf/experiments/cifar10.py`), and written into `record.json`. Idempotent:
records that have both are left untouched. A record whose flags are not its experiment's
config is an error naming it. Tables and campaign runs do the same at load time, so a record
that has not been migrated (e.g. written by older code since) loads as a migrated one does.
"""

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# pylint: disable=g-import-not-at-top,wrong-import-position
from psl_tf.experiments import base
from psl_tf.experiments import cifar10
from psl_tf.experiments import costs
from psl_tf.experiments import records
# pylint: enable=g-import-not-at-top,wrong-import-position


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--results", default=os.path.join(REPO, "docs", "results", "cifar10"))
  parser.add_argument("--preset", default="cifar10", choices=sorted(base.PRESETS))
  parser.add_argument("--dry_run", action="store_true", help="check, write nothing")
  args = parser.parse_args(argv)

  def expected(experiment, row):
    settings = base.resolve_settings(args.preset, experiment)
    return base.expected_run_id(experiment, row, settings, lambda: costs.stored_block_flops(
        args.results, settings["depth"], settings["width"], settings["image_size"]))

  done = records.migrate(args.results, cifar10.EXPERIMENTS, expected, write=not args.dry_run,
                         preset=args.preset)
  migrated = sum(state == "migrated" for _, state in done)
  print(f"migrate_records: {len(done)} records, {migrated} "
        f"{'to migrate' if args.dry_run else 'migrated'}, {len(done) - migrated} current")


if __name__ == "__main__":
  main()
