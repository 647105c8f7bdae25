"""edge_agent.eval without I/O: configuration grid, stratified subsets, verdict statistics, judge prompt filling."""

import json
import math

import numpy as np
import pytest

from edge_agent.errors import ConfigError
from edge_agent.eval.grid import models_label, parse_configs
from edge_agent.eval.instructions import Instruction, excluding, stratified_order, stratified_subset
from edge_agent.eval.judge_prompt import pair_messages
from edge_agent.eval.progress import format_duration
from edge_agent.eval.sanity import REFUSAL, sanity_pairs, sanity_summary
from edge_agent.eval.summary import length_controlled_win_rate, paired_difference, summarize
from edge_agent.eval.verdicts import Pair, judge_pair

TEMPLATE = ("<|im_start|>system\nYou judge.\n<|im_end|>\n<|im_start|>user\nQ: {instruction}\nm: {output_1}\n"
            "M: {output_2}\nWhich?\n<|im_end|>")


def items(sizes: dict[str, int]) -> list[Instruction]:
    out = []
    for name, size in sizes.items():
        for _ in range(size):
            out.append(Instruction(len(out), f"q{len(out)}", name, "eval", " ".join(["word"] * 40) + f" {len(out)}"))
    return out


def test_configs_parse_into_named_generators():
    configs = parse_configs("0,0; 1,2 ;1,2,temperature=0", "smollm2")
    assert [c.generator for c in configs] == ["smollm2_M0_k0", "smollm2_M1_k2", "smollm2_M1_k2_temperature0"]
    assert configs[2].request() == {"layers": 1, "proposers": 2, "temperature": 0.0}
    assert parse_configs("0,3")[0].generator == "edge-moa_M0_k0"  # k means nothing alone
    again = parse_configs("0,0,sample=2")[0]
    assert again.generator == "edge-moa_M0_k0_sample2" and again.request() == {"layers": 0, "proposers": 0}


def test_aggregation_options_go_into_the_request_and_the_name():
    config = parse_configs("1,2,aggregation=select,select_ranker=pairwise,reference_max_chars=2000", "smollm2")[0]
    assert config.request() == {"layers": 1, "proposers": 2, "aggregation": "select", "select_ranker": "pairwise",
                                "reference_max_chars": 2000}
    assert config.generator == ("smollm2_M1_k2_aggregationselect_reference_max_chars2000_select_rankerpairwise")


@pytest.mark.parametrize("text", ["", "1", "a,b", "1,2,top_k=3", "-1,0", "0,0;0,0", "1,2,aggregation=vote",
                                  "1,2,select_ranker=listwise"])
def test_bad_configs_name_the_chunk(text):
    with pytest.raises(ConfigError):
        parse_configs(text)


def test_models_label():
    assert models_label(["smollm2", "smollm2"]) == "smollm2"
    assert models_label(["/x/smollm2", "qwen05", "smollm2"]) == "mixed-smollm2+qwen05"


def test_stratified_subset_keeps_dataset_shares_and_is_repeatable():
    source = items({"selfinstruct": 252, "oasst": 188, "koala": 156, "helpful_base": 129, "vicuna": 80})
    subset = stratified_subset(source, 100, seed=3)
    counts = {name: sum(i.dataset == name for i in subset) for name in ("selfinstruct", "oasst", "koala",
                                                                         "helpful_base", "vicuna")}
    assert counts == {"selfinstruct": 31, "oasst": 23, "koala": 20, "helpful_base": 16, "vicuna": 10}
    assert [i.index for i in subset] == sorted(i.index for i in subset)
    assert subset == stratified_subset(source, 100, seed=3)
    assert subset != stratified_subset(source, 100, seed=4)
    assert stratified_subset(source, None, 0) == source


def test_excluding_drops_what_an_earlier_run_answered(tmp_path):
    source = items({"selfinstruct": 30, "oasst": 20})
    earlier = stratified_subset(source, 10, seed=0)
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps([{"instruction": i.instruction, "output": "x"} for i in earlier]))
    left = excluding(source, [path])
    assert len(left) == 40 and not {i.instruction for i in left} & {i.instruction for i in earlier}
    fresh = stratified_subset(left, 10, seed=1)
    assert {i.dataset for i in fresh} == {"selfinstruct", "oasst"} and not set(fresh) & set(earlier)
    everything = tmp_path / "all.json"
    everything.write_text(json.dumps([{"instruction": i.instruction, "output": "x"} for i in source]))
    with pytest.raises(ConfigError, match="no instruction"):
        excluding(source, [everything])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigError, match="bad.json"):
        excluding(source, [tmp_path / "bad.json"])


def test_stratified_order_makes_every_prefix_close_to_stratified():
    source = items({"a": 60, "b": 30, "c": 10})
    done = [i for i in source if i.dataset == "a"][:20]  # a run stopped early, in file order
    pending = [i for i in source if i not in done]
    order = stratified_order(pending, done, seed=0)
    assert sorted(i.index for i in order) == sorted(i.index for i in pending)
    first = order[:30]  # with the 20 done: 50 answered, a b c in shares 6:3:1 as far as possible
    answered = done + first
    assert [sum(i.dataset == n for i in answered) for n in "abc"] == [30, 15, 5]
    assert order == stratified_order(pending, done, seed=0) != stratified_order(pending, done, seed=1)


def record(verdict, pref=None, flip=False, len_a=10, len_b=10):
    return {"verdict": verdict, "preference": verdict if pref is None else pref, "flip": flip, "len_a": len_a,
            "len_b": len_b, "p_a_first": 0.5, "p_a_second": 0.5, "judge": "j"}


def test_summary_counts_ties_as_half_and_brackets_the_rate():
    records = [record(1.0)] * 6 + [record(0.5, flip=True)] * 2 + [record(0.0)] * 2
    summary = summarize(records)
    assert summary["win_rate"] == 0.7 and (summary["wins"], summary["ties"], summary["losses"]) == (6, 2, 2)
    assert summary["ci_low"] <= 0.7 <= summary["ci_high"] and summary["ci_low"] < summary["ci_high"]
    assert summary["flip_rate"] == 0.2 and summary["n"] == 10


def _verdict(instruction: str, verdict: float, len_b: int = 100) -> dict:
    return {"instruction": instruction, "verdict": verdict, "len_b": len_b}


def test_paired_difference_is_on_the_common_instructions_and_its_ci_brackets_it():
    first = [_verdict(f"i{n}", 1.0 if n % 4 else 0.0) for n in range(40)]  # 75% wins
    second = [_verdict(f"i{n}", 1.0 if n % 2 else 0.0) for n in range(20, 60)]  # 50% wins
    paired = paired_difference(first, second, seed=1)
    assert paired["n"] == 20  # i20..i39 only
    assert paired["win_rate_first"] == 0.75 and paired["win_rate_second"] == 0.5
    assert paired["difference"] == 0.25
    assert paired["ci_low"] < 0.25 < paired["ci_high"]
    assert paired["same_verdict"] == 0.75  # odd n: both win; n % 4 == 2: first wins alone; n % 4 == 0: both lose
    assert paired_difference(first, [_verdict("elsewhere", 1.0)])["n"] == 0


def test_paired_difference_refuses_verdicts_against_another_baseline():
    with pytest.raises(ValueError, match="another baseline answer"):
        paired_difference([_verdict("i", 1.0, len_b=100)], [_verdict("i", 0.0, len_b=250)])


def test_length_controlled_rate_removes_a_pure_length_effect():
    rng = np.random.default_rng(0)
    delta = rng.normal(0, 300, 400)
    pref = 1 / (1 + np.exp(-3 * np.tanh(delta / 300)))  # only length matters, plus a 0 intercept
    raw = float((pref[delta > 0] > 0.5).mean())
    lc = length_controlled_win_rate(pref, 1000 + delta.clip(0), 1000 - delta.clip(None, 0))
    assert raw == 1.0 and lc == pytest.approx(0.5, abs=0.03)
    shifted = 1 / (1 + np.exp(-(1.0 + 3 * np.tanh(delta / 300))))  # a real edge of sigmoid(1) = 0.73
    assert length_controlled_win_rate(shifted, 1000 + delta, np.full(400, 1000.0)) == pytest.approx(0.731, abs=0.03)
    assert length_controlled_win_rate(pref[:5], delta[:5], delta[:5]) is None  # too few pairs


def test_template_is_filled_in_one_pass():
    turns = pair_messages("say {output_2}", "I am {output_1}", "second", template=TEMPLATE)
    assert turns[0] == ("system", "You judge.")
    assert turns[1] == ("user", "Q: say {output_2}\nm: I am {output_1}\nM: second\nWhich?")
    assert pair_messages("q", "x" * 50, "y", template=TEMPLATE, max_output_chars=5)[1][1].count("x") == 5


class PositionBiased:
    """A scorer that always prefers the second output by 3:1, whatever the texts (as small judges do)."""

    name = "biased"

    def label_logprobs(self, turns, labels):
        return {"m": math.log(0.25), "M": math.log(0.75)}


def test_both_orders_cancel_a_position_bias():
    verdict = judge_pair(PositionBiased(), Pair("q", "a", "b"), template=TEMPLATE)
    assert verdict["p_a_first"] == 0.25 and verdict["p_a_second"] == 0.75
    assert verdict["preference"] == 0.5 and verdict["verdict"] == 0.5 and verdict["flip"] is True


def test_sanity_pairs_put_the_good_answer_first():
    pairs = sanity_pairs(items({"a": 6, "b": 4}), 5, seed=1)
    assert len(pairs) == 15 and {p.kind for p in pairs} == {"truncated", "off_topic", "refusal"}
    for p in pairs:
        assert p.a != p.b and p.a.endswith(p.a.split()[-1])
        if p.kind == "truncated":
            assert p.b.split() == p.a.split()[:10]
        if p.kind == "refusal":
            assert p.b == REFUSAL
    summary = sanity_summary([dict(record(1.0, pref=0.8), kind=p.kind) for p in pairs])
    assert summary["accuracy"] == 1.0 and set(summary["by_kind"]) == {"truncated", "off_topic", "refusal"}


def test_durations():
    assert format_duration(75) == "1m15s" and format_duration(3 * 3600 + 120) == "3h02m"


def test_stats_of_a_select_answer_keep_the_pick():
    from edge_agent.eval.runner import answer_stats

    answer = {"response": "two words", "latency_s": 1.0, "inferences": 4, "trace": [
        {"layer": 1, "kind": "propose", "answered": [{"device": "a", "inference_s": 1.0}]},
        {"layer": 2, "kind": "select", "ranker": "pointwise", "picked": 0, "scores": [5.5],
         "answered": [{"device": "a", "inference_s": 0.5}]}]}
    stats = answer_stats(answer, None)
    assert stats["select"] == {"ranker": "pointwise", "picked": 0, "scores": [5.5]} and stats["board_s"] == 1.5


def test_queue_watch_holds_each_sample_until_the_next():
    from edge_agent.eval.queue_watch import QueueWatch
    from edge_agent.wire.messages import Status

    now = [0.0]
    statuses = {"a": Status(device="a", online=True, queue_length=0), "b": Status(device="b", online=True,
                                                                                    queue_length=2)}
    watch = QueueWatch(lambda: statuses, clock=lambda: now[0])
    assert watch.mean_between(0, 1) is None  # nothing sampled yet
    watch.sample()  # t=0: mean 1
    now[0] = 1.0
    statuses = {"a": Status(device="a", online=True, queue_length=4), "b": Status(device="b", online=True,
                                                                                    queue_length=4)}
    watch.sample()  # t=1: mean 4
    now[0] = 3.0
    statuses = {"a": Status(device="a", online=True, queue_length=0), "b": Status(device="b", online=False,
                                                                                    queue_length=9)}
    watch.sample()  # t=3: mean 0, the offline agent left out
    assert watch.mean_between(0.5, 2.0) == pytest.approx((0.5 * 1 + 1.0 * 4) / 1.5)  # 1 held from t=0.5
    assert watch.mean_between(0.0, 3.0) == pytest.approx((1 * 1 + 2 * 4) / 3)
    assert watch.mean_between(1.2, 1.3) == 4  # shorter than a sampling period: the value held then
    assert watch.mean_between(5.0, 6.0) == 0
