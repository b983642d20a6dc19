"""One ``trtmix compile`` job: configuration, workspace, evaluation, orderings, search driver, outputs, report."""
