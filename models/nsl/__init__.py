"""NSL: neural stain learning (Dawood et al., 2021), reimplemented from the paper's description."""
