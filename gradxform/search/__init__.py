"""gradxform.search: discover update rules built from gradxform's own primitives.

Use it as `from gradxform import search` (nothing here is exported from `gradxform` itself,
and importing `gradxform` does not import this package or scikit-learn):

    >>> from gradxform import search
    >>> rule = search.Rule.from_names("g", "id", "sign(g)*sign(m)", "exp", "mul")
    >>> rule.formula()                            # PowerSign
    'g * exp(sign(g)*sign(m))'
    >>> tx = search.rule_optimizer(rule, 1e-2)   # an ordinary GradientTransformation
    >>> objective = search.Objective([search.rosenbrock()])   # or search.default_tasks()
    >>> result = search.regularized_evolution(objective, budget=16, population=8, seed=0)
    >>> best_rule, best_fitness = result.top(1)[0]

Modules: `dsl` (the rule language), `tasks` (training problems), `population` (vmapped
scoring), `strategies` (random search, regularized evolution).
"""

from gradxform.search._dsl import BINARY
from gradxform.search._dsl import DECAYS
from gradxform.search._dsl import FIELDS
from gradxform.search._dsl import KNOWN
from gradxform.search._dsl import OPERANDS
from gradxform.search._dsl import UNARY
from gradxform.search._dsl import Rule
from gradxform.search._dsl import RuleState
from gradxform.search._dsl import rule_optimizer
from gradxform.search._dsl import rule_transform
from gradxform.search._dsl import scale_by_rule
from gradxform.search._dsl import validate
from gradxform.search._population import DEFAULT_LEARNING_RATES
from gradxform.search._population import Evaluator
from gradxform.search._population import Objective
from gradxform.search._population import benchmark
from gradxform.search._population import train_optimizer
from gradxform.search._population import train_rule
from gradxform.search._strategies import SearchResult
from gradxform.search._strategies import mutate
from gradxform.search._strategies import random_rule
from gradxform.search._strategies import random_search
from gradxform.search._strategies import ranked_table
from gradxform.search._strategies import regularized_evolution
from gradxform.search._tasks import Task
from gradxform.search._tasks import default_tasks
from gradxform.search._tasks import held_out_tasks
from gradxform.search._tasks import logistic_regression
from gradxform.search._tasks import mlp_digits
from gradxform.search._tasks import rosenbrock

__all__ = sorted(name for name in dir() if not name.startswith("_") and name not in {
    "dsl", "population", "strategies", "tasks"})
