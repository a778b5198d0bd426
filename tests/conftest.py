"""Test configuration: 8 fake CPU devices (for pmap / sharding tests), set before jax loads.

`GRADXFORM_TEST_ACCELERATOR=1` runs the tests on JAX's default backend (a GPU or TPU) instead;
only the single-device files make sense there (BUILD_NOTES, "Checked on a GPU"), and tests that
need more devices than it has (`@pytest.mark.devices(n)`, chex's pmap variants: 2) or CPU code
(`@pytest.mark.cpu_only`: the CPU kernels' HLO, LAPACK) are deselected there, counted in the
summary. The suite itself (`.ci/run`) never deselects or skips.
"""

import os

ON_ACCELERATOR = os.environ.get("GRADXFORM_TEST_ACCELERATOR") == "1"
if not ON_ACCELERATOR:
  # The 8 fake devices share two cores with the other test worker's compiles: a collective's
  # rendezvous (pmap's psum) can wait on a starved device thread, and XLA:CPU aborts the
  # whole process when one waits 40 s (its default). Ten minutes, the suite's own budget.
  # The suite is mostly XLA compiles of small programs: LLVM at -O0 makes them about 17 %
  # cheaper on the whole (its numbers differ from -O2's as another CPU's might, within every
  # tolerance here), and one codegen thread a module about 5 % more (two test workers share
  # two cores already). `GRADXFORM_TEST_XLA_OPT=default` runs at XLA's own level, as users do.
  opt = ("" if os.environ.get("GRADXFORM_TEST_XLA_OPT") == "default"
         or "xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", "")
         else " --xla_backend_optimization_level=0 --xla_cpu_parallel_codegen_split_count=1")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8"
                             " --xla_cpu_collective_call_terminate_timeout_seconds=600" +
                             opt).strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

if not ON_ACCELERATOR:
  assert len(jax.devices()) == 8, "tests need the 8 fake CPU devices; jax was imported too early"

import pytest  # noqa: E402


# No silent skips: the test extras are always installed (`pip install -e ".[test]"`), so a test
# that skips means a missing tool or a renamed feature. Every skip is reported as a failure.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  outcome = yield
  report = outcome.get_result()
  if report.skipped and not hasattr(report, "wasxfail"):
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    report.longrepr = f"this suite allows no skips; {item.nodeid} skipped: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
  outcome = yield
  report = outcome.get_result()
  if report.skipped:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    report.longrepr = f"this suite allows no skips; {collector.nodeid} skipped: {reason}"


def pytest_configure(config):
  config.addinivalue_line("markers", "devices(n): needs n devices (the suite fakes 8 on CPU)")
  config.addinivalue_line("markers", "cpu_only: checks CPU code (kernels' or LAPACK's HLO)")


def pytest_collection_modifyitems(config, items):
  """On an accelerator (only there), deselects the tests it cannot run."""
  if not ON_ACCELERATOR:
    return
  have, cpu = jax.device_count(), jax.default_backend() == "cpu"
  keep, drop = [], []
  for item in items:
    marker = item.get_closest_marker("devices")
    need = marker.args[0] if marker else (2 if "with_pmap" in item.name else 1)
    runs = need <= have and (cpu or item.get_closest_marker("cpu_only") is None)
    (keep if runs else drop).append(item)
  if drop:
    config.hook.pytest_deselected(items=drop)
    items[:] = keep
