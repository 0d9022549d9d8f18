"""The parameters every run flow takes (budgets, resume, where it runs, sampling overrides),
declared once as annotated types so build-hub, nightly-refresh and synthesize show the same form
fields with the same checks and descriptions, and one set names those left out of a run id."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

# How a run executes, not what it computes: a run id leaves these out, so changing one resumes.
EXECUTION_FIELDS = frozenset({"run_id", "fresh", "dry_run", "budget_tokens", "budget_cost", "store",
                              "llm_shard_parallelism"})

BudgetTokens = Annotated[int | None, Field(ge=1, description="Stop the run once it has paid for this many tokens "
                                           "(cached answers are free); rerun with a larger budget to continue")]
BudgetCost = Annotated[float | None, Field(gt=0, description="Stop the run once its calls cost this many USD "
                                           "(needs the model in settings.llm_prices)")]
Fresh = Annotated[bool, Field(description="Recompute every stage of the run id, ignoring its checkpoints "
                                          "(LLM answers still come from the cache)")]
StoreUrl = Annotated[str | None, Field(description="Override the store URL (settings.store)")]
LLMBaseUrl = Annotated[str | None, Field(description="Override the LLM endpoint; unset and unconfigured = embedded model")]
LLMModel = Annotated[str | None, Field(description="Override the model name")]
EmbeddingModel = Annotated[str | None, Field(description="Override the embedding model name")]
Temperature = Annotated[float | None, Field(ge=0, le=2, description="Override the template's temperature")]
MaxTokens = Annotated[int | None, Field(ge=8, description="Override the template's max_tokens")]
