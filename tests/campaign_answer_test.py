"""scripts/campaign_answer.py: the answer table is computed from stored tables, and the copies
in README.md and docs/RESULTS.md are the ones the stored campaign results give."""

import importlib.util
import json
import os

import pytest

from psl_tf.experiments import records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "campaign_answer", os.path.join(ROOT, "scripts", "campaign_answer.py"))
campaign_answer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(campaign_answer)


def _entry(best, tflops, epochs):
  """A row of a stored table: its per-seed best blocks `best`, as reproduce.aggregate keeps it."""
  return {"best": list(records.mean_spread(best)),
          "seeds": list(range(len(best))), "training_tflops": [tflops, 0.0],
          "epochs_per_stage": epochs}


def _write(results, task, tag, table):
  os.makedirs(os.path.join(results, task), exist_ok=True)
  with open(os.path.join(results, task, f"results{tag}.json"), "w") as f:
    json.dump({"table": table, "runs": []}, f)


def test_cells_mark_what_lies_outside_two_standard_errors(tmp_path):
  results = str(tmp_path)
  _write(results, "rotation", "", {
      "psl": _entry([50.0, 52.0, 54.0], 50.0, 5),
      "e2e": _entry([58.0, 59.0, 60.0], 100.0, 15),
      "e2e_at_psl": _entry([52.0, 53.0], 48.0, 7),
      "psl_f": _entry([51.0], 50.0, 5)})
  # Jigsaw's grid-head variant is no experiment of the campaign: a table stored under its label
  # is not read (the answer names experiments, not labels).
  _write(results, "jigsaw", "_headgrid4", {
      "psl": _entry([40.0, 41.0], 50.0, 5), "e2e": _entry([40.5, 41.5], 100.0, 15)})
  _write(results, "rotation", "_headgrid4", {
      "psl": _entry([40.0, 41.0], 50.0, 5), "e2e": _entry([40.5, 41.5], 100.0, 15)})
  lines = campaign_answer.answer(results, ["rotation", "jigsaw"])
  text = "\n".join(lines)
  assert lines[0].endswith("| rotation | jigsaw |")
  # psl − e2e = 52 − 59 = −7, SE sqrt(4/3 + 1/3) = 1.29; Welch t = −5.42 on 2.94 degrees of
  # freedom: p = 0.013 (the t density integrated numerically). Three seeds a row: in bold.
  assert ("at 50 % of e2e's compute), default heads | **−7.0 ± 1.3** (3+3, p = 0.01) | – |"
          in text)
  # psl − e2e_at_psl = 52 − 52.5, SE sqrt(4/3 + 0.5/2) = 1.26, p = 0.72; a 2-seed row.
  assert ("(e2e for PSL's FLOPs, 7 epochs), default heads | −0.5 ± 1.3 (3+2, p = 0.72, "
          "preliminary) | – |") in text
  # A single seed: no standard error, no test, no verdict.
  assert "(the paper: equal) | +1.0 (3+1, preliminary) | – |" in text
  # Only rotation has the grid experiment: t = −0.71 on 2 degrees of freedom,
  # p = 1 − t/sqrt(2+t²).
  assert ("heads on a 4×4 grid (`--head_grid=4`) | −0.5 ± 0.7 (2+2, p = 0.55, "
          "preliminary) | – |") in text
  # Budgets nobody ran are left out, not listed empty.
  assert "psl_paper" not in text and "`sl`" not in text


def test_the_short_table_keeps_only_the_main_budgets_and_points_to_the_full_one(tmp_path):
  results = str(tmp_path)
  _write(results, "rotation", "", {
      "psl": _entry([50.0, 52.0, 54.0], 50.0, 5), "e2e": _entry([58.0, 59.0, 60.0], 100.0, 15),
      "psl_f": _entry([51.0], 50.0, 5)})
  full = "\n".join(campaign_answer.answer(results, ["rotation"]))
  brief = "\n".join(campaign_answer.answer(results, ["rotation"], brief=True))
  # The same cell in both; PSL_f's line only in the full table.
  line = "default heads | **−7.0 ± 1.3** (3+3, p = 0.01) |"
  assert line in full and line in brief
  assert "`psl_f`" in full and "`psl_f`" not in brief
  assert "docs/RESULTS.md" in brief and "docs/RESULTS.md" not in full


def test_update_writes_every_block_a_file_has_and_refuses_a_file_with_none(tmp_path, capsys):
  results = tmp_path / "results"
  _write(str(results), "rotation", "", {"psl": _entry([50.0, 52.0], 50.0, 5),
                                        "e2e": _entry([58.0, 59.0], 100.0, 15),
                                        "psl_f": _entry([51.0, 50.0], 50.0, 5)})
  readme = tmp_path / "README.md"
  readme.write_text(f"a\n{campaign_answer.BRIEF_BEGIN}\nSTALE\n{campaign_answer.BRIEF_END}\nb\n")
  campaign_answer.main([f"--results={results}", "--tasks=rotation", "--update", str(readme)])
  assert "short table updated" in capsys.readouterr().out
  text = readme.read_text()
  assert "STALE" not in text and "`psl` − `e2e`: equal images" in text and "psl_f" not in text
  assert campaign_answer.BEGIN not in text  # no full table where the file has no markers for it
  plain = tmp_path / "plain.md"
  plain.write_text("nothing marked\n")
  with pytest.raises(SystemExit, match="has none of the markers"):
    campaign_answer.main([f"--results={results}", "--update", str(plain)])


def test_ablation_lines_give_the_change_and_the_gap_it_leaves(tmp_path):
  results = str(tmp_path)
  _write(results, "rotation", "", {"psl": _entry([48.0, 50.0], 50.0, 5),
                                   "e2e_at_psl": _entry([56.0, 58.0], 48.0, 10)})
  _write(results, "rotation", "_headgrid4", {"psl": _entry([57.0, 59.0], 50.0, 5),
                                             "e2e_at_psl": _entry([57.0, 58.0], 48.0, 10)})
  _write(results, "rotation", "_headgrid4_lrrestartfalse", {"psl": _entry([61.0, 63.0], 50.0, 5)})
  lines = campaign_answer.ablations(results, ["rotation", "jigsaw"])
  text = "\n".join(lines)
  # Grid − global for psl: 58 − 49 = +9, SE sqrt(2/2 + 2/2) = 1.41, t = 6.4 on 2 degrees of
  # freedom: p = 1 − t/sqrt(2+t²) = 0.024; gap 58 − 57.5 = +0.5, SE sqrt(2/2 + 0.5/2) = 1.12,
  # p = 0.71. Two seeds a row: preliminary, never bold, however small p is.
  assert ("| heads keep a 4×4 grid (`--head_grid=4`, psl and e2e alike) | +9.0 ± 1.4 (2+2, "
          "p = 0.02, preliminary) | +0.5 ± 1.1 (2+2, p = 0.71, preliminary) | – | – |") in text
  # One schedule: 62 − 58 = +4 over the grid psl (p = 0.11); 62 − 57.5 = +4.5 over
  # e2e_at_psl (grid; p = 0.092).
  assert ("on the grid heads | +4.0 ± 1.4 (2+2, p = 0.11, preliminary) | +4.5 ± 1.1 (2+2, "
          "p = 0.09, preliminary) | – | – |") in text
  # Changes nobody ran are left out; the gap without any change closes the table.
  assert "frozen_bn" not in text and "cosine" not in text
  assert lines[-1].endswith("PSL − e2e_at_psl is −8.0 ± 1.4 (2+2, p = 0.03, preliminary) on "
                            "rotation, – on jigsaw.")


def test_update_rewrites_only_the_marked_block(tmp_path):
  path = tmp_path / "doc.md"
  path.write_text(f"before\n{campaign_answer.BEGIN}\nold\n{campaign_answer.END}\nafter\n")
  assert campaign_answer.update(str(path), ["| a |", "| b |"])
  assert path.read_text() == (f"before\n{campaign_answer.BEGIN}\n| a |\n| b |\n"
                              f"{campaign_answer.END}\nafter\n")
  assert not campaign_answer.update(str(path), ["| a |", "| b |"])
  (tmp_path / "plain.md").write_text("no markers\n")
  with pytest.raises(SystemExit, match="no <!-- campaign-answer -->"):
    campaign_answer.update(str(tmp_path / "plain.md"), ["| a |"])


@pytest.mark.parametrize("doc,brief", [("README.md", True),
                                       (os.path.join("docs", "RESULTS.md"), False)])
def test_the_documents_carry_the_answer_of_the_stored_results(doc, brief):
  with open(os.path.join(ROOT, doc)) as f:
    text = f.read()
  begin, end = ((campaign_answer.BRIEF_BEGIN, campaign_answer.BRIEF_END) if brief
                else (campaign_answer.BEGIN, campaign_answer.END))
  block = text[text.index(begin) + len(begin) + 1:text.index(end)]
  expected = campaign_answer.answer(campaign_answer.DEFAULT_RESULTS, campaign_answer.TASKS,
                                    brief=brief)
  assert block == "\n".join(expected) + "\n", (
      f"{doc} is stale: run python scripts/campaign_answer.py --update README.md "
      "docs/RESULTS.md")


def test_results_carries_the_ablation_table_of_the_stored_results():
  with open(os.path.join(ROOT, "docs", "RESULTS.md")) as f:
    text = f.read()
  begin, end = campaign_answer.ABLATIONS_BEGIN, campaign_answer.ABLATIONS_END
  block = text[text.index(begin) + len(begin) + 1:text.index(end)]
  expected = campaign_answer.ablations(campaign_answer.DEFAULT_RESULTS,
                                       campaign_answer.ABLATION_TASKS)
  assert block == "\n".join(expected) + "\n", (
      "docs/RESULTS.md's ablation table is stale: run python scripts/campaign_answer.py "
      "--update README.md docs/RESULTS.md")


def test_stored_table_blocks_copy_the_table_without_its_heading(tmp_path):
  results = tmp_path / "results"
  (results / "jigsaw").mkdir(parents=True)
  (results / "jigsaw" / "results.md").write_text("### jigsaw: probes\n\n| a |\n|---|\n| 1 |\n\n")
  doc = tmp_path / "doc.md"
  doc.write_text("intro\n<!-- stored-table: jigsaw/results.md -->\nold\n<!-- /stored-table -->\n"
                 "outro\n")
  assert campaign_answer.update_stored_tables(str(doc), str(results)) == 1
  assert doc.read_text() == ("intro\n<!-- stored-table: jigsaw/results.md -->\n| a |\n|---|\n"
                             "| 1 |\n<!-- /stored-table -->\noutro\n")
  assert campaign_answer.update_stored_tables(str(doc), str(results)) == 0
  doc.write_text("<!-- stored-table: rotation/results.md -->\n<!-- /stored-table -->\n")
  with pytest.raises(SystemExit, match="no stored table .*rotation/results.md"):
    campaign_answer.update_stored_tables(str(doc), str(results))


def test_results_carries_the_stored_tables_it_shows():
  with open(os.path.join(ROOT, "docs", "RESULTS.md")) as f:
    text = f.read()
  blocks = campaign_answer.STORED_TABLE.findall(text)
  assert "jigsaw/results.md" in [name for _, name, _, _ in blocks]
  for _, name, body, _ in blocks:
    expected = campaign_answer.stored_table(campaign_answer.DEFAULT_RESULTS, name)
    assert body == "\n".join(expected) + "\n", (
        f"docs/RESULTS.md's copy of {name} is stale: run python scripts/campaign_answer.py "
        "--update README.md docs/RESULTS.md")
