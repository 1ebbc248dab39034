from django.db import transaction
from django.http import HttpRequest, JsonResponse

from shop.models import Order
from shop.tasks import send_receipt


def checkout(request: HttpRequest) -> JsonResponse:
    with transaction.atomic():
        order = Order.objects.create(email=request.POST["email"], total_cents=int(request.POST["total_cents"]))
        # The job and its dispatch commit with the order, or roll back with it.
        result = send_receipt.enqueue(order.id)
    return JsonResponse({"order": order.id, "receipt_task": result.id}, status=201)


def receipt(request: HttpRequest, result_id: str) -> JsonResponse:
    result = send_receipt.get_result(result_id)
    body = {"status": result.status}
    if result.status == "SUCCESSFUL":
        body["receipt"] = result.return_value
    return JsonResponse(body)
