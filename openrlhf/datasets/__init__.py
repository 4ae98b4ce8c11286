"""SFT and preference datasets (policy and teacher tokenisation): import the module that holds a name
(``openrlhf.datasets.loading``, ``.templates``, ``.sft_dataset``, ``.preference_dataset``, ``.build``, ...)."""
