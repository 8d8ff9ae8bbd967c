"""KServe model server for iranker: `serving.model.IRankerModel`, started by `iranker serve`."""
