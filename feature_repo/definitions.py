"""Feast definitions: the user context the ranker reads for recommendation, and item attributes.

The parquet sources under data/ are written by `iranker features apply --data DIR` from a recommendation dataset
folder (written by `iranker data ingest`); `iranker features materialize` loads them into the online store.
"""

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float64, Int64, String

# Interactions of public data sets go back decades; a feature row stays valid until a newer one replaces it.
TTL = timedelta(days=365 * 100)

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING,
              description="a user of the recommendation data set")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING, description="an item (e.g. a movie)")

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
    source=FileSource(name="user_context_source", path="data/user_context.parquet",
                      timestamp_field="event_timestamp"),
    online=True,
    tags={"owner": "iranker"},
)

item_attributes = FeatureView(
    name="item_attributes",
    entities=[item],
    ttl=TTL,
    schema=[
        Field(name="title", dtype=String),
        Field(name="classes", dtype=Array(String)),
        Field(name="popularity", dtype=Int64, description="number of interactions"),
    ],
    source=FileSource(name="item_attributes_source", path="data/item_attributes.parquet",
                      timestamp_field="event_timestamp"),
    online=True,
    tags={"owner": "iranker"},
)
