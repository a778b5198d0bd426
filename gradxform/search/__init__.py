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

from gradxform.search.dsl import BINARY
from gradxform.search.dsl import DECAYS
from gradxform.search.dsl import FIELDS
from gradxform.search.dsl import KNOWN
from gradxform.search.dsl import OPERANDS
from gradxform.search.dsl import UNARY
from gradxform.search.dsl import Rule
from gradxform.search.dsl import RuleState
from gradxform.search.dsl import rule_optimizer
from gradxform.search.dsl import rule_transform
from gradxform.search.dsl import scale_by_rule
from gradxform.search.dsl import validate
from gradxform.search.population import DEFAULT_LEARNING_RATES
from gradxform.search.population import Evaluator
from gradxform.search.population import Objective
from gradxform.search.population import benchmark
from gradxform.search.population import train_optimizer
from gradxform.search.population import train_rule
from gradxform.search.strategies import SearchResult
from gradxform.search.strategies import mutate
from gradxform.search.strategies import random_rule
from gradxform.search.strategies import random_search
from gradxform.search.strategies import ranked_table
from gradxform.search.strategies import regularized_evolution
from gradxform.search.tasks import Task
from gradxform.search.tasks import default_tasks
from gradxform.search.tasks import held_out_tasks
from gradxform.search.tasks import logistic_regression
from gradxform.search.tasks import mlp_digits
from gradxform.search.tasks import rosenbrock

__all__ = sorted(name for name in dir() if not name.startswith("_") and name not in {
    "dsl", "population", "strategies", "tasks"})
