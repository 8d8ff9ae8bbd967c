"""Data: readers of public formats, turned into RankRequests / RankingInstances."""
