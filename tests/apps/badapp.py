import this_module_does_not_exist  # noqa: F401  (a boot error on purpose)

routes = {}
