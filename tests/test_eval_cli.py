"""The eval commands end to end through the CLI on `clipstore synth` output: zero-shot, retrieval,
SQL over the metrics rows, compare, report, suites and the errors a user sees."""

import re

import pytest


@pytest.mark.slow
def test_eval_commands(tmp_path, cli):
    store = str(tmp_path / "store")
    cli("synth", tmp_path / "synth", "--images", "40", "--size", "32")
    cli("-q", "--store", store, "ingest", "karpathy", tmp_path / "synth" / "captions", "--name", "synth")
    cli("-q", "--store", store, "ingest", "imagefolder", tmp_path / "synth" / "classification", "--name", "synth_cls")

    zs = cli("-q", "--store", store, "eval", "zeroshot", "--model", "tiny-vit", "--corpus", "synth_cls",
             "--templates", "aerial", "--raw-names").stdout
    zs_run = re.search(r"-> (evaluation-\S+)", zs).group(1)
    assert "top1" in zs and "balanced_acc" in zs
    ret = cli("-q", "--store", store, "eval", "retrieval", "--model", "tiny-vit", "--corpus", "synth",
              "--source-split", "val", "--protocol", "one-caption", "--seed", "3").stdout
    ret_run = re.search(r"-> (evaluation-\S+)", ret).group(1)
    assert "one-caption" in ret and "mR" in ret

    rows = cli("--store", store, "sql", f"SELECT corpus, protocol, seed, metric, value FROM metrics "
                                        f"WHERE run = '{ret_run}' AND metric = 'mR'", "--format", "csv").stdout
    lines = [line.replace('"', "") for line in rows.splitlines()]
    assert lines[0] == "corpus,protocol,seed,metric,value" and lines[1].startswith("synth,one-caption,3,mR,")

    cmp = cli("--store", store, "eval", "compare", zs_run, ret_run).stdout
    assert "delta" in cmp and "top1" in cmp and "t2i_R@1" in cmp

    report = cli("--store", store, "report", ret_run).stdout
    md = re.search(r"report (\S+report\.md)", report).group(1)
    assert "recall_at_k.png" in report and open(md).read().startswith("# Evaluation")

    missing = cli("--store", store, "eval", "suite", "rs", "--model", "tiny-vit", check=False)
    assert missing.returncode == 3 and "Traceback" not in missing.stderr
    assert "missing ucm_cls zeroshot" in missing.stdout and "clipstore ingest imagefolder" in missing.stdout
    assert "no corpus of suite rs is ingested" in missing.stderr

    bad = cli("--store", store, "eval", "retrieval", "--model", "tiny-vit", "--corpus", "synth_cls",
              "--source-split", "val", check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "no split 'val'" in bad.stderr and "fix:" in bad.stderr
