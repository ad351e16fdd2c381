"""containerd image store: named records that point at a root descriptor (manifest or index)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from proto import images_pb2
from proto.images_grpc import ImagesStub

from . import errors
from .errors import AlreadyExists
from .labels import DANGLING_PREFIX, IMAGE_NAME, OCI_REF_NAME
from .types import Descriptor, Image

if TYPE_CHECKING:
    from .client import Containerd


class ImageStore:
    def __init__(self, client: "Containerd") -> None:
        self._client = client
        self._stub = ImagesStub(client.channel)

    async def get(self, name: str) -> Image:
        with errors.mapped():
            resp = await self._stub.Get(images_pb2.GetImageRequest(name=name), metadata=self._client.metadata())
        return Image.from_pb(resp.image)

    async def list(self, *filters: str) -> list[Image]:
        with errors.mapped():
            resp = await self._stub.List(
                images_pb2.ListImagesRequest(filters=list(filters)), metadata=self._client.metadata()
            )
        return [Image.from_pb(i) for i in resp.images]

    async def create(self, name: str, target: Descriptor, labels: dict[str, str] | None = None) -> Image:
        img = images_pb2.Image(name=name, target=target.to_pb(), labels=labels or {})
        with errors.mapped():
            resp = await self._stub.Create(images_pb2.CreateImageRequest(image=img), metadata=self._client.metadata())
        return Image.from_pb(resp.image)

    async def update(self, name: str, target: Descriptor, labels: dict[str, str] | None = None) -> Image:
        img = images_pb2.Image(name=name, target=target.to_pb(), labels=labels or {})
        with errors.mapped():
            resp = await self._stub.Update(images_pb2.UpdateImageRequest(image=img), metadata=self._client.metadata())
        return Image.from_pb(resp.image)

    async def put(self, name: str, target: Descriptor, labels: dict[str, str] | None = None, *,
                  keep_replaced: bool = False) -> Image:
        """Create the record, or point an existing one at the new target (one atomic update).
        keep_replaced (Docker's namespace): the image the record named before stays, where no other
        record names it, as Docker's dangling record of it (`<none>` in `docker images`), as
        `docker pull` and `docker build` leave a replaced image. Else its content and snapshots go
        at the next garbage collection, the layers the new image shares with it included, under
        the feet of a `docker run` unpacking the new one."""
        if keep_replaced:
            await self._keep_dangling(name, target)
        try:
            return await self.create(name, target, labels)
        except AlreadyExists:
            return await self.update(name, target, labels)

    async def _keep_dangling(self, name: str, target: Descriptor) -> None:
        try:
            old = await self.get(name)
        except errors.NotFound:
            return
        if old.target.digest == target.digest or old.name.startswith(DANGLING_PREFIX):
            return
        if len(await self.list(f"target.digest=={old.target.digest}")) > 1:
            return  # another record keeps it
        kept = {k: v for k, v in old.labels.items() if k not in (IMAGE_NAME, OCI_REF_NAME)}
        try:
            await self.create(DANGLING_PREFIX + old.target.digest, old.target, kept)
        except AlreadyExists:
            pass

    async def delete(self, name: str, *, sync: bool = False) -> None:
        with errors.mapped():
            await self._stub.Delete(images_pb2.DeleteImageRequest(name=name, sync=sync), metadata=self._client.metadata())
