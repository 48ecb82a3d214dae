"""Problem families."""
from slamjax.problems.quadratic import make_quadratic, quadratic_problem  # noqa: F401
