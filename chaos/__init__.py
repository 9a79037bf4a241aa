"""The standing fault suite (`tetik chaos`): real servers, injected faults, every action compared with `tetik replay`."""
