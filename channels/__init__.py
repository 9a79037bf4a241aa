"""tetik channels: the delivery adapters behind ``tetik deliver``.

``base`` holds the one interface (:class:`channels.base.Channel`, returning a
:class:`channels.base.Delivery`) and its rules; ``jsonl``, ``kafka``,
``onsite``, ``smtp`` and ``webhook`` are the adapters, one module each;
``config`` maps channels to adapters from a YAML file.
"""
