"""tau2's retail domain: an online store's customer service (users, orders, products).

The DB is ``db.json`` (50 products, 500 users, 1,000 orders; models in
``retail_models.py``), the tools are in ``retail_tools.py``, the policy is
``policy.md``. Retail has no user-side tools or DB, and its tasks have no
initial state: every task starts from the pristine ``db.json``.
"""

from __future__ import annotations

from areal_env.envs.tau2.domain import Domain
from areal_env.envs.tau2.domains.retail.retail_models import RetailDB
from areal_env.envs.tau2.domains.retail.retail_tools import RetailTools

DOMAIN = Domain(name="retail", db_type=RetailDB, db_file="db.json", tools=RetailTools)
"""The retail domain, as ``DOMAINS`` in ``envs/tau2/domain.py`` names it."""
