"""Feast definitions: the user context the ranker reads for recommendation, and the candidates' first-stage
signals: item attributes (interaction count, mean rating, classes) and routed models (price, measured quality,
overall and per task family).

The parquet sources under data/ are written by `iranker features apply --data DIR [DIR ...]` from dataset folders
(written by `iranker data ingest`); `iranker features materialize` loads them into the online store. Candidate
features are keyed by dataset and id, computed from the dataset's training split, and time-stamped so that a
point-in-time join sees only what was known before an instance (see iranker/features.py).
"""

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float64, Int64, String

# Interactions of public data sets go back decades; a feature row stays valid until a newer one replaces it.
TTL = timedelta(days=365 * 100)

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING,
              description="a user of the recommendation data set")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING, description="an item (e.g. a movie)")
dataset = Entity(name="dataset", join_keys=["dataset"], value_type=ValueType.STRING,
                 description="the dataset an item or a routed model's figures come from")
llm = Entity(name="llm", join_keys=["model_id"], value_type=ValueType.STRING, description="a model the router picks")

user_context = FeatureView(
    name="user_context",
    entities=[user],
    ttl=TTL,
    schema=[
        Field(name="history_titles", dtype=Array(String), description="recent items, oldest first"),
        Field(name="history_item_ids", dtype=Array(String), description="their ids, oldest first"),
        Field(name="n_interactions", dtype=Int64),
        Field(name="mean_rating", dtype=Float64, description="NaN when the data has no ratings"),
        Field(name="favourite_classes", dtype=Array(String), description="most frequent item classes"),
    ],
    # materialized from the parquet file; a user's chosen item is pushed to the online store as it happens
    # (POST /v1/feedback, iranker.features.UserFeatures.add_chosen), so their next request sees it
    source=PushSource(name="user_context_push",
                      batch_source=FileSource(name="user_context_source", path="data/user_context.parquet",
                                              timestamp_field="event_timestamp")),
    online=True,
    tags={"owner": "iranker"},
)

item_attributes = FeatureView(
    name="item_attributes",
    entities=[dataset, item],
    ttl=TTL,
    schema=[
        Field(name="title", dtype=String),
        Field(name="classes", dtype=Array(String)),
        Field(name="ratings", dtype=Int64, description="training-split interactions so far"),
        Field(name="mean_rating", dtype=Float64, description="their mean rating (1-5); null without ratings"),
    ],
    source=FileSource(name="item_attributes_source", path="data/item_attributes.parquet",
                      timestamp_field="event_timestamp"),
    online=True,
    tags={"owner": "iranker"},
)

model_quality = FeatureView(
    name="model_quality",
    entities=[dataset, llm],
    ttl=TTL,
    schema=[
        Field(name="price", dtype=Float64, description="mean USD per query on the training split"),
        Field(name="quality", dtype=Float64, description="share of training queries answered well"),
        Field(name="queries", dtype=Int64, description="training queries measured"),
    ],
    source=FileSource(name="model_quality_source", path="data/model_quality.parquet",
                      timestamp_field="event_timestamp"),
    online=True,
    tags={"owner": "iranker"},
)

task = Entity(name="task", join_keys=["task"], value_type=ValueType.STRING,
              description="a routing query's task family (e.g. RouterBench's eval_name: mmlu, gsm8k, ...)")

model_task_quality = FeatureView(
    name="model_task_quality",
    entities=[dataset, llm, task],
    ttl=TTL,
    schema=[
        Field(name="price", dtype=Float64, description="mean USD per query of the family on the training split"),
        Field(name="quality", dtype=Float64, description="share of the family's training queries answered well"),
        Field(name="queries", dtype=Int64, description="training queries of the family measured"),
    ],
    source=FileSource(name="model_task_quality_source", path="data/model_task_quality.parquet",
                      timestamp_field="event_timestamp"),
    online=True,
    tags={"owner": "iranker"},
)
