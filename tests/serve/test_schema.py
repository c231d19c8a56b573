"""The OpenAPI schema tells the truth: schemathesis generates requests from it (valid and invalid,
for every operation) and checks every answer against it, in process, with a bounded number of
examples: 0 server errors and 0 conformance failures. (Its pytest plugin is not used: its
parametrize does not run under this pytest; the strategies are driven by hypothesis directly.)"""

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from medclassify.serve.app import ServeSettings, create_app  # noqa: E402


KEY = "schema-test-key"


@pytest.fixture(scope="module", params=["open", "keyed"])
def api_schema(tiny_run, request):
    keyed = request.param == "keyed"
    app = create_app(tiny_run, ServeSettings(workers=1, queue=4, allowed_hosts=["testserver"], api_key=KEY if keyed else None))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, **({"headers": {"X-API-Key": KEY}} if keyed else {}))
    return schema, ({"X-API-Key": KEY} if keyed else None)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_answer_is_declared(api_schema, mode):
    api_schema, headers = api_schema
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/predict", "/v1/explain", "/v1/model", "/health"}
    calls = []
    for op in operations:
        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=40, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            # Excluded: "schema-valid data is accepted". The schema says the file is any bytes; the
            # server accepts them only when they are an image (415/422 otherwise, both declared).
            calls.append(case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance]).status_code)

        try:
            check()
        except Unsatisfiable:  # no invalid request exists for an operation without parameters
            assert mode == GenerationMode.NEGATIVE and op.method.upper() == "GET"
    assert calls and max(calls) < 500
