"""Learning: new messages become facts (and vectors) off the hot path.

* :class:`Learner` -- processes the store's durable learn-job queue (lease, extract, consolidate,
  embed in batches, complete; retries with backoff; idempotent; survives restarts).
* :class:`RuleExtractor` -- model-free extraction of identifiers, contacts, dates, "my X is Y",
  preferences, standing requests and what worked before.
* :class:`ModelExtractor` -- extraction with any AutoGen ``ChatCompletionClient`` (structured output).
* :func:`consolidate` -- merge duplicates, supersede updated values, keep provenance.
"""

from __future__ import annotations

from .consolidate import ConsolidationStats, consolidate, same_value
from .extract import Candidate, ExtractionError, Extractor
from .model import ExtractedFact, ExtractedFacts, ModelExtractor
from .reindex import reindex
from .rules import RuleExtractor
from .worker import Learner, LearnerStats

__all__ = [
    "Learner",
    "LearnerStats",
    "RuleExtractor",
    "ModelExtractor",
    "ExtractedFact",
    "ExtractedFacts",
    "Extractor",
    "Candidate",
    "ExtractionError",
    "ConsolidationStats",
    "consolidate",
    "same_value",
    "reindex",
]
