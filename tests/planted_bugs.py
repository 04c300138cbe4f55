"""Planted bugs: every test can fail. Applies small bugs one at a time to a scratch copy of the
repository and runs, for each, default-run tests that should catch it; prints a table and exits 1
unless every bug was caught (and the clean copy passed the same tests first).

    python tests/planted_bugs.py              # every bug (CI: `make planted-bugs`)
    python tests/planted_bugs.py --list       # the bugs and the tests aimed at them
    python tests/planted_bugs.py mask-off-by-one stale-cache   # some of them

Each bug is one edit (an exact snippet replaced) in the product code; a snippet that no longer
matches is reported as "stale" (the bug list must follow the code) and counts as not caught."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "compose", "drafters", "trees", "routing", "eval", "serve")


@dataclass(frozen=True)
class Bug:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids or files, all in the default run
    needs: str = ""  # "amx": the code it breaks runs only on a CPU with AMX (elsewhere: not applicable)


def not_applicable(bug: Bug) -> str | None:
    """Why `bug` cannot be shown here (its code does not run on this machine), or None."""
    if bug.needs == "amx":
        sys.path.insert(0, str(ROOT))
        from runtime.native_linear import amx_ready

        if not amx_ready():
            return "the AMX linear kernel does not run here"
    return None


BUGS = [
    # rows past the first 16 sum their k chunks in another order: still close to the float64
    # product, but a tree's rows then differ in the last bit from the same rows computed alone
    Bug("amx-row-pairs-reordered", "runtime/linear_kernel.c",
        "for (int64_t c = 0; c < chunks; c++) {\n            const uint16_t *w = wb + c * 2048 + half * 1024;",
        "for (int64_t c = chunks - 1; c >= 0; c--) {\n            const uint16_t *w = wb + c * 2048 + half * 1024;",
        ("tests/test_native_linear.py::test_a_row_is_the_same_bits_at_any_row_count",
         "tests/test_invariant.py::test_kernel_self_check_passes_here"), needs="amx"),
    # the compiled layer's norm keeps float32 precision for rows past the first 16: close to the
    # op-by-op layer, but a tree's rows then differ from the same rows computed alone
    Bug("layer-norm-rows-past-16-unrounded", "runtime/layer_kernel.c",
        "store_bf16(out + r * out_stride + j, _mm512_mul_ps(load_bf16(w + j), round_bf16(_mm512_mul_ps(load_bf16(xr + j), scale))));",
        "store_bf16(out + r * out_stride + j, _mm512_mul_ps(load_bf16(w + j), r < 16 ? round_bf16(_mm512_mul_ps(load_bf16(xr + j), scale))"
        " : _mm512_mul_ps(load_bf16(xr + j), scale)));",
        ("tests/test_native_layer.py::test_rows_do_not_depend_on_the_row_count",), needs="amx"),
    # the compiled layer forgets the attention's residual add
    Bug("layer-drops-attention-residual", "runtime/layer_kernel.c",
        "    if (!status) {\n        add_into(h, y, rows * d);\n        norm_rows(h, rows, d, norm_w, eps, y);",
        "    if (!status) {\n        norm_rows(h, rows, d, norm_w, eps, y);",
        ("tests/test_native_layer.py::test_compiled_layer_computes_the_layer",), needs="amx"),
    # the whole-layer call writes each row's value where its key belongs in the cache
    Bug("layer-forward-keys-from-values", "runtime/layer_kernel.c",
        "memcpy(cache_k + g * kv_sg + (length + r) * kv_ss, qkv + (r * all + heads + g) * hd, (size_t)hd * 2);",
        "memcpy(cache_k + g * kv_sg + (length + r) * kv_ss, qkv + (r * all + heads + kv + g) * hd, (size_t)hd * 2);",
        ("tests/test_native_layer.py::test_one_call_layer_equals_the_layer_around_the_attention",), needs="amx"),
    # an EAGLE-3 drafter's compiled layer reads [norm(h) | norm(emb)] instead of [norm(emb) | norm(h)]
    Bug("drafter-layer-inputs-swapped", "runtime/layer_kernel.c",
        "        norm_rows_at(emb, rows, d, w->norm_emb, w->eps1, x, in);\n        norm_rows_at(h, rows, d, w->norm1, w->eps1, x + d, in);",
        "        norm_rows_at(emb, rows, d, w->norm_emb, w->eps1, x + d, in);\n        norm_rows_at(h, rows, d, w->norm1, w->eps1, x, in);",
        ("tests/test_drafters_compiled.py::test_compiled_drafts_close_to_the_module_forward",), needs="amx"),
    # the float32 kernel's 6-row passes add their products in another order than the 1..5-row ones
    # (the last k first; at any vector width)
    Bug("f32-six-rows-reordered", "runtime/linear_kernel.c",
        "        for (int t = 0; t < V; t++) a[r][t] = (vnf){0};\n    for (int64_t i = 0; i < k; i++) {",
        "        for (int t = 0; t < V; t++) a[r][t] = R == 6 ? x[r * xs + k - 1] * load_vnf(wb + (k - 1) * 64 + col + t * F32_LANES) : (vnf){0};\n"
        "    for (int64_t i = 0; i < k - (R == 6); i++) {",
        ("tests/test_native_linear.py::test_a_row_is_the_same_bits_at_any_row_count",
         "tests/test_native_linear.py::test_every_row_group_shape_gives_the_same_bits")),
    # the float32 layer's norm (runtime/layer_f32.c) reads another row's scale beside others: a
    # row's bits then depend on the rows beside it
    Bug("f32-layer-norm-row-dependent", "runtime/layer_f32.c",
        "        const float scale = 1.0f / sqrtf(lanes_sum(acc) / (float)d + eps);",
        "        const float scale = 1.0f / sqrtf(lanes_sum(acc) / (float)d + eps + (rows > 1 ? 1e-6f : 0.0f));",
        ("tests/test_native_layer_f32.py::test_pre_and_post_rows_do_not_depend_on_the_row_count",)),
    # silu in the float32 layer off by 0.1%: close, but not the layer's arithmetic
    Bug("f32-layer-silu-scaled", "runtime/layer_f32.c",
        "            st8(act + r * inter + j, num / (1.0f + e) * ld8(u + j));",
        "            st8(act + r * inter + j, num / (1.0f + e) * ld8(u + j) * 1.001f);",
        ("tests/test_native_layer_f32.py::test_compiled_layer_computes_the_layer",
         "tests/test_drafters_compiled.py::test_compiled_drafts_close_to_the_module_forward")),
    # the float32 attention's scale rounded differently in the key axis' last, short block:
    # still close to float64, but a tree row then differs from its keys packed alone
    Bug("f32-attention-length-dependent", "runtime/layer_f32.c",
        "        score[j] = m <= MASKED_F32 ? -INFINITY : lanes_sum(acc[j]) * scale + m;",
        "        score[j] = m <= MASKED_F32 ? -INFINITY : lanes_sum(acc[j]) * (valid == 8 ? scale : scale * 1.0000001f) + m;",
        ("tests/test_invariant_f32.py::test_attention_row_equals_its_visible_keys_packed_alone",
         "tests/test_invariant_f32.py::test_tree_forward_logits_equal_plain_decoding")),
    # a 4-bit weight's two vectors read from each other's nibbles: every weight a value of its
    # own group's grid, but the wrong one
    Bug("grid4-nibbles-swapped", "runtime/linear_kernel.c",
        "q0 = __builtin_convertvector((vni)(u & 15), vnf);\n        q1 = __builtin_convertvector((vni)(u >> 4), vnf);",
        "q0 = __builtin_convertvector((vni)(u >> 4), vnf);\n        q1 = __builtin_convertvector((vni)(u & 15), vnf);",
        ("tests/test_weight_formats.py::test_the_kernel_on_the_stored_form_gives_the_float32_kernels_bits",
         "tests/test_weight_formats.py::test_a_gguf_like_model_computes_the_same_logits_from_its_stored_weights")),
    # 4-6 rows over a stored weight restart their chains at every chunk of 32 k instead of
    # carrying them on: only the last chunk's products are left
    Bug("stored-chunk-restarts", "runtime/linear_kernel.c",
        "a[r][t] = i0 ? load_vnf(acc + r * 64 + col + t * F32_LANES) : (vnf){0};",
        "a[r][t] = (vnf){0};",
        ("tests/test_weight_formats.py::test_the_kernel_on_the_stored_form_gives_the_float32_kernels_bits",)),
    # a thread whose share of a split weight starts on a block's second half skips the next half
    Bug("split-block-skips-half", "runtime/linear_kernel.c",
        "h += whole ? 2 : 1;",
        "h += 2;",
        ("tests/test_weight_formats.py::test_the_kernel_on_the_stored_form_gives_the_float32_kernels_bits",)),
    # a grid taken without rebuilding every value: a weight one ulp off its grid is rounded onto it
    # (the torch reference; the compiled search below)
    Bug("weight-grid-unchecked", "runtime/weight_formats.py",
        "good = (rebuilt.view(torch.int32) == g.view(torch.int32)).all(-1)",
        "good = (rebuilt - g).abs().le(1e-6 * g.abs().amax()).all(-1)",
        ("tests/test_weight_formats.py::test_the_compiled_search_finds_the_references_grid_to_the_bit",)),
    Bug("grid-search-unchecked", "runtime/grid_search.c",
        "ok = bits_of(qq * cand + m) == bits_of(g[i]);",
        "ok = fabsf(qq * cand + m - g[i]) <= 1e-6f * fabsf(g[i]);",
        ("tests/test_weight_formats.py::test_one_value_off_the_grid_keeps_the_weight_float32",)),
    # rows that share a block of the bf16 attention kernel take the first one's max: still close
    # to float64 attention, but a row's bits then depend on the rows beside it
    Bug("bf16-block-shares-max", "runtime/attention_kernel.c",
        "x = exp16(x - top[r]);", "x = exp16(x - top[0]);",
        ("tests/test_native_attention.py::test_rows_are_bit_identical_alone_with_strided_inputs_and_a_bf16_mask[vectors]",)),
    # the AMX path adds a row's gathered chunks with the weights' high halves only: close to
    # float64 attention, but a tree row whose visible run ends in another chunk than plain
    # decoding's row then differs from it
    Bug("bf16-tile-gathered-chunks-drop-lo", "runtime/attention_amx.c",
        "                _tile_loadd(7, w->ta_lo, 64);", "                _tile_zero(7);",
        ("tests/test_native_attention.py::test_rows_are_bit_identical_alone_with_strided_inputs_and_a_bf16_mask[tiles]",
         "tests/test_invariant.py::test_attention_row_equals_its_visible_keys_packed_alone"), needs="amx"),
    Bug("loss-block-alpha-unsampled", "drafters/training/fused_head_loss.py",
        "torch.where(sampled, alpha_rows, torch.zeros_like(alpha_rows))", "alpha_rows",
        ("tests/test_fused_head_loss.py::test_head_kl_equals_the_plain_losses_and_metrics",)),
    Bug("domain-evidence-dropped", "compose/strategies/routed.py",
        "self.domain = domain_evidence(router.probabilities(router.feature(hidden_states)), self.drafters)",
        "self.domain = {}",
        ("tests/test_calibration.py::test_confidence_reads_the_turns_domain_evidence_from_the_prefill",)),
    Bug("accept-all", "trees/verifying.py",
        "ok = rows.uniform[r] * q.gather(1, x[:, None]).squeeze(1) < p[at, x]",
        "ok = torch.ones_like(x, dtype=torch.bool)",
        ("tests/test_trees_law.py::test_rejection_sampling_is_lossless_for_sampled_children",)),
    Bug("no-residual", "trees/verifying.py",
        "p[at[~ok]] = residual(p[at[~ok]], q[~ok])", "pass",
        ("tests/test_trees_law.py::test_rejection_sampling_is_lossless_for_sampled_children",)),
    Bug("wrong-sibling-order", "trees/verifying.py",
        "self.order = torch.sort(props.parent, stable=True).indices",
        "self.order = torch.sort(props.parent * len(props) - torch.arange(len(props)), stable=True).indices",
        ("tests/test_draw_order_law.py::test_draws_without_replacement_are_verified_in_draw_order",)),
    Bug("greedy-bonus-at-the-root", "trees/verifying.py",
        "return paths_to(batch, end, draws[end])", "return paths_to(batch, end, draws[batch.starts[:-1]])",
        ("tests/test_trees_verify.py",)),
    # the single-tree greedy walk descends into the last of duplicate siblings: the same tokens,
    # but a path through the node the batch machinery and the drafters' caches do not take
    Bug("greedy-walk-last-sibling", "trees/verifying.py",
        "    for i in range(n - 1, 0, -1):  # downwards", "    for i in range(1, n):  # downwards",
        ("tests/test_trees_verify.py::test_a_greedy_tree_walk_verifies_as_the_batch_machinery_does",)),
    # what a compiled forward read is never found changed: a target's plan and a drafter's
    # compiled weights are never remade, so an edited or replaced weight runs with the old values
    # (online-learning drafters change theirs as they go)
    Bug("compiled-forward-never-stale", "runtime/plan.py",
        "        return (list(map(id, map(dict.get, self.dicts, self.names))) == self.ids",
        "        return True or (list(map(id, map(dict.get, self.dicts, self.names))) == self.ids",
        ("tests/test_drafters_compiled.py::test_the_compiled_weights_follow_the_model",
         "tests/test_decoder.py::test_the_plan_follows_the_model")),
    Bug("mask-off-by-one", "trees/pack.py",
        "for d in range(1, int(depths.max()) + 1 if n else 0):",
        "for d in range(1, int(depths.max()) if n else 0):",
        ("tests/test_trees_pack.py", "tests/test_engine.py")),
    Bug("position-ids-off-by-one", "trees/pack.py",
        "position_ids=tree.depths + prefix_len,", "position_ids=tree.depths + prefix_len + 1,",
        ("tests/test_trees_pack.py", "tests/test_engine.py")),
    Bug("cut-keeps-child-without-parent", "trees/tree.py",
        "    order = torch.sort(eff, descending=True, stable=True).indices[:budget] + 1\n"
        "    keep = torch.zeros(len(tree), dtype=torch.bool)\n"
        "    keep[0] = True\n"
        "    keep[order] = True\n"
        "    check_ancestor_closed(tree.parents, keep)\n",
        "    order = (eff.numel() - 1 - torch.sort(eff.flip(0), descending=True, stable=True).indices)[:budget] + 1\n"
        "    keep = torch.zeros(len(tree), dtype=torch.bool)\n"
        "    keep[0] = True\n"
        "    keep[order] = True\n",
        ("tests/test_trees_merge.py",)),
    Bug("merge-keyed-on-token-and-depth", "trees/merge.py",
        "keys = ids[parents[level]] * base + tokens[level]", "keys = tokens[level]",
        ("tests/test_trees_merge.py",)),
    Bug("top-p-ignored", "trees/sampling.py",
        "    if sampling.top_p < 1.0:\n        probs = keep_top_p(probs, sampling.top_p)\n", "",
        ("tests/test_trees_verify.py",)),
    Bug("routed-tree-keeps-proposal-rows", "compose/strategies/routed.py",
        "return ComposedTree(match_rule(trees[choice]), choice, trees, self.draft_groups(list(self.drafters)))",
        "return ComposedTree(trees[choice], choice, trees, self.draft_groups(list(self.drafters)))",
        ("tests/test_strategies_law.py::test_routing_over_sampled_trees_is_lossless",)),
    Bug("stale-cache-after-rejection", "runtime/kv.py",
        "if not torch.equal(tail.cpu(), torch.arange(n)):", "if False:",
        ("tests/test_engine.py",)),
    Bug("averaging-weights-not-normalised", "compose/strategies/single.py",
        "    w = w / w.sum()\n", "",
        ("tests/test_composition.py::test_averaged_is_greedy_lossless_and_averages",)),
    Bug("draft-vocabulary-map-off-by-one", "drafters/heads.py",
        "d2t = draft_ids - torch.arange(draft_ids.numel())", "d2t = draft_ids - torch.arange(1, draft_ids.numel() + 1)",
        ("tests/test_drafters_model.py",)),
]


def scratch_copy() -> Path:
    """The product packages and tests/ (no .git, no pretrained weights beyond what tests read)."""
    where = Path(tempfile.mkdtemp(prefix="specmux-planted-"))
    for name in (*PACKAGES, "tests"):
        shutil.copytree(ROOT / name, where / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", where / "pyproject.toml")
    return where


def run_tests(where: Path, tests: tuple[str, ...]) -> tuple[int, float, str]:
    env = dict(os.environ, PYTHONPATH=str(where), OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                           *tests], cwd=where, env=env, capture_output=True, text=True)
    lines = [l for l in done.stdout.splitlines() if l.startswith(("FAILED", "ERROR"))] or done.stdout.splitlines()[-1:]
    return done.returncode, time.perf_counter() - started, (lines[0] if lines else "")[:90]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="bugs to plant (default: all)")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args(argv)
    bugs = [b for b in BUGS if not args.names or b.name in args.names]
    skipped = [(b, not_applicable(b)) for b in bugs]
    for bug, why in skipped:
        if why is not None and not args.list:
            print(f"{bug.name:34s} n/a      {why}")
    bugs = bugs if args.list else [b for b, why in skipped if why is None]
    if args.list or not bugs:
        for b in BUGS:
            print(f"{b.name:34s} {b.path:22s} {' '.join(b.tests)}")
        return 0 if bugs else 2
    where = scratch_copy()
    try:
        clean = tuple(dict.fromkeys(t for b in bugs for t in b.tests))
        rc, seconds, summary = run_tests(where, clean)
        print(f"clean copy, the same tests: rc={rc} in {seconds:.0f} s {summary}")
        if rc != 0:
            print("the clean copy fails its tests: no bug can be shown caught")
            return 1
        rows, caught = [], 0
        for bug in bugs:
            path = where / bug.path
            original = path.read_text()
            if original.count(bug.old) != 1:
                rows.append((bug.name, "STALE", 0.0, f"snippet found {original.count(bug.old)} times in {bug.path}"))
                continue
            path.write_text(original.replace(bug.old, bug.new))
            try:
                rc, seconds, summary = run_tests(where, bug.tests)
            finally:
                path.write_text(original)
            verdict = "caught" if rc == 1 else ("MISSED" if rc == 0 else f"rc={rc}")
            caught += rc == 1
            rows.append((bug.name, verdict, seconds, summary))
            print(f"{bug.name:34s} {verdict:7s} {seconds:5.0f} s  {summary}", flush=True)
    finally:
        shutil.rmtree(where, ignore_errors=True)
    print("\n| bug | verdict | seconds | first failure |\n|---|---|---|---|")
    for name, verdict, seconds, summary in rows:
        print(f"| {name} | {verdict} | {seconds:.0f} | {summary} |")
    print(f"\n{caught} of {len(bugs)} planted bugs caught")
    return 0 if caught == len(bugs) else 1


if __name__ == "__main__":
    sys.exit(main())
