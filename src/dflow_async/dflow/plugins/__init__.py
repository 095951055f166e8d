"""``dflow.plugins``: Dflow's executor plugins, importable (dpgen2 imports them with the rest of
its step configuration) and refused when used. dflow-async runs steps on its own executors:
``Workflow(executor=...)`` or ``config["executor"]``."""
