import pytest
from pydantic import ValidationError

from iranker.schema import MAX_CANDIDATES, RankingInstance, RankRequest, describe_error

C2 = [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}]


def test_valid_requests_of_each_scenario():
    RankRequest(scenario="passage", query="q", candidates=C2)
    RankRequest(scenario="recommendation", history=["Toy Story"], candidates=C2)
    RankRequest(scenario="recommendation", user_id="u1", candidates=C2)  # history filled in from Feast
    RankRequest(scenario="routing", query="q", preference="cost", candidates=C2)


@pytest.mark.parametrize("request_json, field, why", [
    ({"scenario": "search", "query": "q", "candidates": C2}, "scenario", "unknown scenario"),
    ({"scenario": "passage", "query": "q", "candidates": []}, "candidates", "no candidates"),
    ({"scenario": "passage", "query": "q", "candidates": [{"id": "a", "text": "x"}] * 2}, "candidates[1].id",
     "duplicate ids"),
    ({"scenario": "passage", "query": "q", "candidates": [{"id": " ", "text": "x"}]}, "candidates.0.id", "blank id"),
    ({"scenario": "passage", "query": "q", "candidates": [{"id": "a"}]}, "candidates.0.text", "missing text"),
    ({"scenario": "passage", "candidates": C2}, "query", "passage without a query"),
    ({"scenario": "routing", "query": "q", "candidates": C2}, "preference", "routing without a preference"),
    ({"scenario": "routing", "query": "q", "preference": "speed", "candidates": C2}, "preference", "bad preference"),
    ({"scenario": "passage", "query": "q", "preference": "cost", "candidates": C2}, "preference",
     "preference outside routing"),
    ({"scenario": "recommendation", "candidates": C2}, "history", "no history and no user"),
    ({"scenario": "passage", "query": "q", "candidates": [{"id": str(i), "text": "t"}
                                                          for i in range(MAX_CANDIDATES + 1)]},
     "candidates", "too many candidates"),
    ({"scenario": "passage", "query": "q", "candidates": [{"id": "a", "text": "x" * 9000}]}, "candidates.0.text",
     "candidate text too long"),
    ({"scenario": "passage", "query": "q", "candidates": C2, "top_k": 0}, "top_k", "top_k below 1"),
    ({"scenario": "passage", "query": "q", "candidates": C2, "options": {"method": "pairwise"}}, "options.method",
     "unknown method"),
    ({"scenario": "passage", "query": "q", "candidates": C2, "extra": 1}, "extra", "unknown field"),
])
def test_bad_requests_name_the_field(request_json, field, why):
    with pytest.raises(ValidationError) as e:
        RankRequest.model_validate(request_json)
    assert field in describe_error(e.value), why


def test_instance_relevance_must_name_known_candidates():
    with pytest.raises(ValidationError, match=r"relevance\['zz'\]"):
        RankingInstance(id="i", scenario="passage", dataset="d", query="q", candidates=C2, relevance={"zz": 1})


def test_instance_round_trips_to_a_request():
    inst = RankingInstance(id="i", scenario="routing", dataset="d", query="q", preference="balance",
                           candidates=C2, relevance={"a": 0.5})
    req = inst.to_request(reasoning=True)
    assert req.preference == "balance" and req.options.reasoning and [c.id for c in req.candidates] == ["a", "b"]
    assert inst.grade("b") == 0.0
