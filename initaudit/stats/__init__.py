"""Stage 2, statistics: pure functions from tensors (or shapes) to numbers.

Every function here takes tensors and returns numbers or small device tensors, computed on
the tensor's own device, and never touches a module; the recorder (:mod:`initaudit.record`)
decides what to reduce and brings the results to the host in one transfer. One module per
concern, every public name re-exported here so that callers read ``stats.tensor_summary``:

- :mod:`.fans`: the fans ``torch.nn.init`` computes from a shape;
- :mod:`.reduce`: how a tensor is read (slices, the kept scratch buffer, accumulation dtype);
- :mod:`.summaries`: mean, std, extremes and counts of a parameter, fast and exact;
- :mod:`.sharded`: the same as partial sums of one rank's piece, combined across ranks;
- :mod:`.shape`: kurtosis, orthogonality, gate blocks' singular values, spectral radius;
- :mod:`.outputs`: moments of a module's output and an activation's dead/saturated counts;
- :mod:`.gradients`: norm and std of a first-step gradient.
"""

from initaudit.stats.fans import fan_in_and_fan_out
from initaudit.stats.gradients import GradientSummary, gradient_fast, gradient_from_fast, gradient_summary
from initaudit.stats.outputs import (
    OUTPUT_MOMENTS,
    ActivationCounts,
    OutputSummary,
    activation_counts,
    activation_from_counts,
    activation_summary,
    column_passes,
    feature_spread,
    feature_std,
    output_from_moments,
    output_moments,
    output_summary,
)
from initaudit.stats.reduce import (
    CANCELLATION,
    accumulation_dtype,
    cancelled,
    dense,
    scratch_buffer,
    slice_size,
    slices,
)
from initaudit.stats.shape import (
    KURTOSIS_SAMPLE,
    ORTHO_SAMPLE,
    SAMPLE_BLOCKS,
    SAMPLE_RUN,
    ShapeStats,
    block_singular_values,
    chunk_means,
    kurtosis_from_moments,
    kurtosis_sample,
    shape_stats,
    shape_stats_batch,
    spectral_radius,
)
from initaudit.stats.sharded import (
    from_partial_exact,
    from_partial_fast,
    partial_counts,
    partial_exact,
    partial_fast,
    partial_gradient_exact,
    partial_moments,
)
from initaudit.stats.summaries import (
    SMALL,
    Fast,
    Summary,
    combine_fast,
    fast_summary,
    from_fast,
    needs_counts,
    needs_exact,
    probe,
    probe_step,
    small_counts,
    small_summaries,
    tensor_summary,
)

__all__ = [
    "ActivationCounts", "Fast", "GradientSummary", "OutputSummary", "ShapeStats", "Summary",
    "CANCELLATION", "KURTOSIS_SAMPLE", "ORTHO_SAMPLE", "OUTPUT_MOMENTS", "SAMPLE_BLOCKS", "SAMPLE_RUN", "SMALL",
    "accumulation_dtype", "activation_counts", "activation_from_counts", "activation_summary",
    "block_singular_values", "cancelled", "chunk_means", "column_passes", "combine_fast", "dense",
    "fan_in_and_fan_out", "fast_summary", "feature_spread", "feature_std", "from_fast", "from_partial_exact",
    "from_partial_fast", "gradient_fast", "gradient_from_fast", "gradient_summary", "kurtosis_from_moments",
    "kurtosis_sample", "needs_counts", "needs_exact", "output_from_moments", "output_moments", "output_summary",
    "partial_counts", "partial_exact", "partial_fast", "partial_gradient_exact", "partial_moments", "probe",
    "probe_step", "scratch_buffer", "shape_stats", "shape_stats_batch", "slice_size", "slices", "small_counts",
    "small_summaries", "spectral_radius", "tensor_summary",
]
