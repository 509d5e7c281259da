"""The data sets of a `hits-stamps run`: their names, data file stems and the words the report uses.

Shared by the pipeline, which writes the sets (`hits_stamps.pipeline.steps`), and the report, which
shows them (`hits_stamps.report`), so that the report does not import the pipeline. Constants only.
"""

from __future__ import annotations

#: Test sets every classifier is evaluated on, in the report's order: name -> data file stem.
TEST_SETS: dict[str, str] = {"user": "user_test", "real": "real_test", "variables": "variables_test",
                             "simulated": "test"}
TEST_SET_TITLES: dict[str, str] = {
    "user": "your test set",
    "real": "real-pixel HiTS 2015 test objects (no stamp of these objects in training or validation)",
    "variables": "HiTS 2015 variable stars, test objects (Kron-labelled; never in training or validation)",
    "simulated": "simulated HiTS test set",
}
#: Where each training ingredient comes from, as the report names it.
PROVENANCE: dict[str, str] = {
    "simulated": "simulated HiTS stamps (hits_stamps.simulate)",
    "injected": "sources injected into, and artefacts painted on, real HiTS 2015 epochs of the training objects",
    "real": "real HiTS 2015 candidates of the training objects (survey-detected supernovae, star residuals)",
    "user": "your own labelled file",
}
#: Data file stem of each training ingredient.
MIX_STEMS: dict[str, str] = {"simulated": "train", "injected": "inject", "real": "real_train", "user": "user_train"}
