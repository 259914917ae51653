from django.http import HttpResponseNotAllowed, JsonResponse

from .models import Post


def index(request):
    return JsonResponse({"posts": [p.as_dict() for p in Post.objects.order_by("-id")[:20]]})


def create(request):
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    post = Post.objects.create(title=request.POST.get("title", "untitled"), body=request.POST.get("body", ""))
    return JsonResponse(post.as_dict(), status=201)
