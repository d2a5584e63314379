"""The fault suite's report (docs/reliability.md) from the outcomes it recorded."""


def test_the_reliability_report_fails_a_parametrized_test_if_any_of_its_cases_failed(tmp_path):
    from tests.faults.report import ReliabilityReport

    report = ReliabilityReport()
    for passed in (True, False, True):  # the cases of one parametrized test, in order
        report.record("S9", "scenario", "injection", "observed", "test_cases")
        report.outcome("test_cases", passed)
    report.record("1", "scenario", "injection", "observed", "test_plain")
    report.outcome("test_plain", True)
    report.record("2", "scenario", "injection", "observed", "test_never_ran")
    report.write(tmp_path / "reliability.md", "make test")

    text = (tmp_path / "reliability.md").read_text()
    assert "| FAIL | `test_cases` |" in text
    assert "| pass | `test_plain` |" in text
    assert "| not run | `test_never_ran` |" in text
